"""The Gilmer et al. message-passing network with a Set2Set readout, in plain torch: the QM9 model
of Nash-MTL, FAMO and DiBS-MTL (spec dibs.md §6.4; random_weighting_baselines_metrics.md §5.3).

J. Gilmer, S. S. Schoenholz, P. F. Riley, O. Vinyals, G. E. Dahl, *Neural Message Passing for
Quantum Chemistry*, ICML 2017 (edge network, GRU update, Set2Set readout); O. Vinyals, S. Bengio,
M. Kudlur, *Order Matters: Sequence to sequence for sets*, ICLR 2016 (Set2Set). The architecture
follows AvivNavon/nash-mtl `experiments/quantum_chemistry/models.py::Net` (PyG's `NNConv` and
`Set2Set` with their defaults, torch_geometric 2.8.1 `nn/conv/nn_conv.py`, `nn/aggr/set2set.py`):

    h0 = ReLU(lin0(x))                                  lin0: Linear(11 -> 64)
    3 times, with the GRU state starting at h0:
        m = ReLU(NNConv(h, edges))                      NNConv(64, 64, aggr="mean")
        h = GRU(m, h)                                   GRU(64, 64), one layer
    q = Set2Set(h, batch)                               3 processing steps, LSTM(128 -> 64): [B, 128]
    f = ReLU(lin1(q))                                   lin1: Linear(128 -> 64), the shared features
    prediction_t = head_t(f)                            11 heads Linear(64 -> 1)

NNConv (PyG defaults `root_weight=True`, `bias=True`): out_i = mean_{j -> i} x_j W(e_ji) + R x_i + b,
W(e) = reshape(Linear(128 -> 64*64)(ReLU(Linear(5 -> 128)(e))), [64, 64]), R a bias-free 64 x 64
root weight, b a 64-vector initialised at zero; nodes without incoming edges aggregate 0. The
mean runs over the edges whose *target* (edge_index[1]) is i (PyG's source-to-target flow).
Set2Set (PyG): q*_0 = 0; q_t = LSTM(q*_{t-1}); a_i = softmax over the molecule of <x_i, q_t>;
r_t = sum_i a_i x_i; q*_t = [q_t, r_t]. Activations are ReLU after lin0, after every convolution
and after lin1, as in the reference; no ReLU on the heads.

Initialisation matches PyG's: torch's defaults for the linear layers, GRU and LSTM (PyG resets
the edge network with each layer's `reset_parameters`, and its root weight with a uniform bound
1/sqrt(in), which is torch's Linear default), and a zero NNConv bias.

Deliberate deviation (numerically the same function): the edge network depends only on the edge
features, which do not change between the 3 message-passing steps, so `W(e)` is computed once per
forward and reused; PyG's NNConv recomputes it in every step. The gradient is the same.

Parameters (hidden 64): lin0 768; conv 533,312 (edge network 768 + 528,384, root 4,096, bias 64);
GRU 24,960; Set2Set 49,664; lin1 8,256 -> **616,960 shared**; heads 11 x 65 = 715;
**617,675 in all**.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.errors import MTLInputError


class GraphBatch(Protocol):
    """What the MPNN reads from its input: a `benchmarks.data.qm9.MoleculeBatch`, or a PyG `Batch`
    with 5-dimensional `edge_attr`."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    num_graphs: int


class EdgeConditionedConvolution(nn.Module):
    """PyG's `NNConv` (Gilmer et al. 2017, eq. (5) edge network; Simonovsky & Komodakis 2017):
    `out_i = aggregate_{j -> i} x_j W(e_ji) + R x_i + b` with `W(e) = edge_network(e)` reshaped
    to [in, out]; `aggregation` "mean" (the QM9 model) or "add"."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        edge_network: nn.Module,
        /,
        *,
        aggregation: Literal["mean", "add"] = "mean",
        root_weight: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if aggregation not in ("mean", "add"):
            raise MTLInputError(f"aggregation must be 'mean' or 'add', got {aggregation!r}")
        self.in_channels, self.out_channels, self.aggregation = (
            in_channels,
            out_channels,
            aggregation,
        )
        self.edge_network = edge_network
        self.root = nn.Linear(in_channels, out_channels, bias=False) if root_weight else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def edge_weights(self, edge_attr: Tensor, /) -> Tensor:
        """The per-edge matrices `W(e)` [E, in, out]."""
        return self.edge_network(edge_attr).view(-1, self.in_channels, self.out_channels)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        /,
        *,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Convolve node features `x` [N, in] over `edge_index` [2, E] (source, target); pass
        either `edge_attr` [E, F] or precomputed `weights` from `edge_weights`."""
        if weights is None:
            if edge_attr is None:
                raise MTLInputError(
                    "EdgeConditionedConvolution needs edge_attr or precomputed weights"
                )
            weights = self.edge_weights(edge_attr)
        source, target = edge_index[0], edge_index[1]
        messages = torch.bmm(x[source].unsqueeze(1), weights).squeeze(1)
        out = x.new_zeros(x.shape[0], self.out_channels).index_add_(0, target, messages)
        if self.aggregation == "mean":
            counts = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_add_(
                0, target, torch.ones_like(target, dtype=x.dtype)
            )
            out = out / counts.clamp(min=1).unsqueeze(-1)
        if self.root is not None:
            out = out + self.root(x)
        if self.bias is not None:
            out = out + self.bias
        return out


def segment_softmax(scores: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Softmax of `scores` [N] within each segment (`segments` [N] in 0..num_segments-1), with
    PyG's stabilisation (the detached per-segment max) and its 1e-16 in the denominator."""
    maximum = scores.new_full((num_segments,), float("-inf")).scatter_reduce(
        0, segments, scores.detach(), reduce="amax", include_self=True
    )
    exponentials = (scores - maximum[segments]).exp()
    totals = scores.new_zeros(num_segments).index_add_(0, segments, exponentials)
    return exponentials / (totals[segments] + 1e-16)


class Set2Set(nn.Module):
    """Set2Set readout (Vinyals et al. 2016, as PyG's `Set2Set`): `processing_steps` LSTM
    attention rounds over each graph's nodes; output [B, 2 * in_channels]."""

    def __init__(self, in_channels: int, /, *, processing_steps: int) -> None:
        super().__init__()
        self.in_channels, self.processing_steps = in_channels, processing_steps
        self.lstm = nn.LSTM(2 * in_channels, in_channels)

    def forward(self, x: Tensor, batch: Tensor, num_graphs: int, /) -> Tensor:
        state = (
            x.new_zeros(1, num_graphs, self.in_channels),
            x.new_zeros(1, num_graphs, self.in_channels),
        )
        q_star = x.new_zeros(num_graphs, 2 * self.in_channels)
        for _ in range(self.processing_steps):
            query, state = self.lstm(q_star.unsqueeze(0), state)
            query = query.view(num_graphs, self.in_channels)
            attention = segment_softmax((x * query[batch]).sum(dim=-1), batch, num_graphs)
            readout = x.new_zeros(num_graphs, self.in_channels).index_add_(
                0, batch, attention.unsqueeze(-1) * x
            )
            q_star = torch.cat([query, readout], dim=-1)
        return q_star


class MPNN(nn.Module):
    """The QM9 multi-task MPNN (module docstring): `forward(batch)` returns `{task: [B]}`.

    `encode(batch)` gives the shared features [B, hidden] (after lin1 and its ReLU) and
    `decode(features)` the heads' predictions, for the representation ("MTL-R") mode.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        /,
        *,
        node_features: int = 11,
        edge_features: int = 5,
        hidden: int = 64,
        edge_hidden: int = 128,
        message_steps: int = 3,
        set2set_steps: int = 3,
    ) -> None:
        super().__init__()
        if not task_names or len(set(task_names)) != len(task_names):
            raise MTLInputError(
                f"task_names must be distinct and non-empty, got {list(task_names)}"
            )
        self.task_names = tuple(task_names)
        self.message_steps = message_steps
        self.lin0 = nn.Linear(node_features, hidden)
        edge_network = nn.Sequential(
            nn.Linear(edge_features, edge_hidden),
            nn.ReLU(),
            nn.Linear(edge_hidden, hidden * hidden),
        )
        self.conv = EdgeConditionedConvolution(hidden, hidden, edge_network, aggregation="mean")
        self.gru = nn.GRU(hidden, hidden)
        self.set2set = Set2Set(hidden, processing_steps=set2set_steps)
        self.lin1 = nn.Linear(2 * hidden, hidden)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, 1) for name in self.task_names})

    def encode(self, inputs: GraphBatch, /) -> Tensor:
        out = F.relu(self.lin0(inputs.x))
        state = out.unsqueeze(0)
        weights = self.conv.edge_weights(inputs.edge_attr)  # once for all steps (module docstring)
        for _ in range(self.message_steps):
            messages = F.relu(self.conv(out, inputs.edge_index, weights=weights))
            out, state = self.gru(messages.unsqueeze(0), state)
            out = out.squeeze(0)
        pooled = self.set2set(out, inputs.batch, int(inputs.num_graphs))
        return F.relu(self.lin1(pooled))

    def decode(self, features: Tensor, /) -> dict[str, Tensor]:
        return {name: head(features).squeeze(-1) for name, head in self.heads.items()}

    def forward(self, inputs: GraphBatch, /) -> dict[str, Tensor]:
        return self.decode(self.encode(inputs))

    def shared_parameters(self) -> list[nn.Parameter]:
        """lin0, conv, gru, set2set and lin1, as the reference's `shared_parameters()`."""
        return [
            p
            for module in (self.lin0, self.conv, self.gru, self.set2set, self.lin1)
            for p in module.parameters()
        ]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {name: list(head.parameters()) for name, head in self.heads.items()}
