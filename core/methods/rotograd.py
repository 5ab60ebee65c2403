"""RotoGrad: per-task rotations of the shared features and homogenised gradient magnitudes.

RotoGrad (Javaloy and Valera, ICLR 2022) acts on the per-task gradients with respect to the shared
representation z, so it is a `JacobianAggregation` of the engine's representation mode only
(`mtl_backward(..., representation=z)`). It owns one learnable rotation `R_k` per task: the model
feeds task k's head `R_k z` (`RotoGrad.rotate(z, k)`), the engine takes `J` on the unrotated z as
for every method (autograd gives row k as `R_k^T` times the head's gradient), the aggregation
rescales the rows (`aggregate`) and the rotations learn from RotoGrad's alignment loss, which the
method hands the engine as its `auxiliary_loss` (a graph to its own parameters only). Decisions
and the comparison with the reference code are in docs/DECISIONS.md ("RotoGrad").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from core.errors import MTLInputError
from core.methods.base import (
    AggregationResult,
    HeadGradient,
    JacobianAggregation,
    check_integer,
    check_num_tasks,
    check_task_count,
    safe_reciprocal,
    state_tensor,
)


class RotoGrad(JacobianAggregation):
    """RotoGrad, gradient homogenisation in multitask learning (Javaloy and Valera, ICLR 2022).

    Magnitudes. Each call t with the per-task gradients `g_k` on the shared features (row k of
    `J`, every sample of the batch at once; `||.||` is the norm of the whole row, the Frobenius
    norm over the batch) and the baseline norms `||g_k^0||`:

        r_k = ||g_k|| / ||g_k^0||,   alpha_k = r_k / sum_j r_j,   C = sum_k alpha_k ||g_k||,
        d = sum_k C g_k / ||g_k||,

    so every task's term has the same norm C, a convex combination of the tasks' norms weighted by
    their relative convergence: a task whose gradient shrank least (converges slowest) pulls C
    towards its own norm. The baseline is the first call's norms, replaced once by the norms of call
    `burn_in_period` (0-based; the reference's `burn_in_period`, default 20: losses change fast at
    first). The update d goes to the encoder; heads receive the plain `grad l_k` (the reference
    backpropagates each raw loss into its head): `head_weights` are ones.

    Directions. Task k's head sees `R_k z` (on the first `rotation_size` entries of z's last
    dimension; the rest passes unrotated, as the reference's `latent_size`), with `R_k` detached:
    the heads never train the rotations. With `h_{n,k}` the gradient of task k on sample n's rotated
    features (known to the method as `R_k g_{n,k}`, since `J` holds `g_{n,k} = R_k^T h_{n,k}`), the
    target of sample n is the mean unit direction scaled to the mean gradient's norm,
    `v_n = ||(1/K) sum_k g_k|| (1/K) sum_k g_{n,k} / ||g_k||`, and the rotations minimise

        L_rot = sum_k sum_n ||R_k v_n - h_{n,k}||^2

    (n runs over every index of the features but the last) with `v` and `h` held fixed. This is the
    reference's form: on rotations `||R_k v_n||` is constant, so its gradient is twice that of
    `-sum_n <R_k^T h_{n,k}, v_n>`, the paper's `L_rot^k`, whose `v_n` is the plain mean of the unit
    gradients (the reference's is that times `||(1/K) sum_k g_k||`). `auxiliary_loss(J, losses)`
    returns it with a graph to the rotations' parameters only; the engine writes its gradient into
    them. Train them with their own optimiser and a smaller learning rate than the model's, as the
    paper's Stackelberg analysis asks. Cost: K `r x r` matrix exponentials and their backward.

    Parametrisation: `R_k = expm(A_k - A_k^T)` with `A_k` the strictly lower triangle of the
    parameter `generators[k]` (`[K, r, r]`, float32 zeros at construction, so `R_k = I`), the
    exponential map of geotorch's `orthogonal(..., triv="expm")` that the reference uses, whose
    rotations are `base @ expm(...)` with a random `base`; here `base = I` (docs/DECISIONS.md).

    Defaults: `burn_in_period = 20` (the reference's). `rotation_size` has no default in the
    reference (it is the size of the model's features); `None` here builds no rotations
    (`rotate` returns z as it is, `auxiliary_loss` is None): RotoGrad's magnitude scaling alone.
    The reference's `normalize_losses` (backpropagate `l_k / l_k^0` instead of `l_k`) is left out.
    Deviations: a zero gradient contributes nothing to d and has `r_k = 0` (the reference clamps
    norms at 1e-15), and a task whose baseline norm is 0 takes its first nonzero norm as its
    baseline (the reference divides by 1e-15); `v` uses exact division where the reference's
    `divide` adds 1e-15 inside logarithms.

    State: the baseline norms `[*batch_shape, K]` (float64, host) and the call count; the rotations
    are parameters, not batched (one model), reset to the identity by `reset()`. Engine mode:
    "representation" only (in full mode `J` is on the parameters, where no rotation sits).

    Diagnostics: `"contribution_norms"` (C, or 0 for a zero gradient), `"convergence_ratios"` (r_k)
    and `"common_norm"` (C, batch-shaped); the engine adds `"auxiliary_loss"` (L_rot).

    Example (features of size 64, the heads fed the rotated features)::

        method = RotoGrad(2, rotation_size=64)
        rotation_optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)
        z = encoder(x)
        losses = [loss_k(head_k(method.rotate(z, k)), y_k) for k, (head_k, loss_k, y_k) in enumerate(tasks)]
        core.mtl_backward(losses, encoder.parameters(), method, task_params=heads, representation=z)
        optimizer.step(); rotation_optimizer.step()
    """

    name = "rotograd"
    paper = "Javaloy, Valera, RotoGrad: Gradient Homogenization in Multitask Learning (ICLR 2022)"
    claims = frozenset({"permutation_equivariant"})
    stateful = True
    requires_num_tasks = True
    head_gradient = HeadGradient.RAW
    engine_modes = frozenset({"representation"})

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        rotation_size: int | None = None,
        burn_in_period: int = 20,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "RotoGrad")
        if rotation_size is not None:
            rotation_size = check_integer(
                "rotation_size (the number of leading feature entries rotated)", rotation_size
            )
        self.rotation_size = rotation_size
        self.burn_in_period = check_integer(
            "burn_in_period (the call whose norms replace the first baseline)",
            burn_in_period,
            minimum=0,
        )
        self._generators: torch.nn.Parameter | None = None
        if rotation_size is not None:
            self._generators = torch.nn.Parameter(
                torch.zeros(self.num_tasks, rotation_size, rotation_size)
            )
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None
        self.reset()

    # -- lifecycle -----------------------------------------------------------------------------

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._steps = 0
        self._baseline = torch.zeros((*self.batch_shape, self.num_tasks), dtype=torch.float64)
        if self._generators is not None:
            with torch.no_grad():
                self._generators.zero_()
            self._generators.grad = None
        self._cache = None

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(() if self._generators is None else (self._generators,))

    @property
    def generators(self) -> torch.nn.Parameter | None:
        """The learnable `[K, r, r]` whose strict lower triangles generate the rotations (None
        without rotations)."""
        return self._generators

    @property
    def baseline(self) -> Tensor:
        """The baseline norms `||g_k^0||` `[*batch_shape, K]` (0 where not yet set)."""
        return self._baseline.clone()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "batch_shape": list(self.batch_shape),
            "steps": self._steps,
            "baseline": self._baseline.clone(),
        }
        if self._generators is not None:
            state["generators"] = self._generators.detach().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        self._steps = int(state["steps"])
        self._baseline = (
            state_tensor(state, "baseline", (*self.batch_shape, self.num_tasks), "RotoGrad")
            .to(torch.float64)
            .clone()
        )
        if self._generators is not None:
            size = self._generators.shape
            values = state_tensor(state, "generators", tuple(size), "RotoGrad")
            with torch.no_grad():
                self._generators.copy_(values)
        elif "generators" in state:
            raise MTLInputError(
                "RotoGrad state holds rotations but this instance has none (rotation_size=None)"
            )
        self._pristine = self._steps == 0

    # -- the rotations ---------------------------------------------------------------------------

    def rotations(self) -> Tensor | None:
        """The current rotations `R` `[K, r, r]`, detached (None without rotations)."""
        if self._generators is None:
            return None
        key = (
            self._generators._version,
            self._generators.data_ptr(),
            self._generators.dtype,
            self._generators.device,
        )
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, _rotation_matrices(self._generators))
        return self._cache[1]

    def rotate(self, features: Tensor, task: int, /) -> Tensor:
        """Task `task`'s view of the shared features: `R_task` applied to the first `rotation_size`
        entries of the last dimension (the rest unchanged), `R` detached, so the heads' losses have no
        graph to the rotations; `features` itself unchanged without rotations."""
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise MTLInputError(f"task must be an index in 0..{self.num_tasks - 1}, got {task!r}")
        rotations = self.rotations()
        if rotations is None:
            return features
        size = self._check_features(features.shape, "features")
        rotation = rotations[task].to(dtype=features.dtype, device=features.device)
        rotated = features[..., :size] @ rotation.mT
        return (
            rotated
            if features.shape[-1] == size
            else torch.cat([rotated, features[..., size:]], dim=-1)
        )

    def _check_features(self, shape: torch.Size | tuple[int, ...], what: str) -> int:
        size = self.rotation_size
        assert size is not None
        if len(shape) == 0 or shape[-1] < size:
            raise MTLInputError(
                f"RotoGrad rotates the first rotation_size = {size} entries of the features' last dimension, but the "
                f"{what} have shape {tuple(shape)}; build it with rotation_size at most the feature size"
            )
        return size

    # -- the method ------------------------------------------------------------------------------

    def _aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        check_task_count(self, losses, self.num_tasks)
        self._match_batch_shape(tuple(jacobian.shape[:-2]))
        norms = torch.linalg.vector_norm(
            jacobian, dim=-1, dtype=torch.float64
        )  # [..., K] on J's device
        host_norms = norms.cpu()
        baseline = self._baseline
        if self._steps == 0 or self._steps == self.burn_in_period:
            baseline = host_norms.clone()
        baseline = torch.where(
            baseline > 0, baseline, host_norms
        )  # a zero baseline waits for a nonzero norm
        ratios = torch.where(host_norms > 0, host_norms * safe_reciprocal(baseline), 0.0)
        alphas = ratios * safe_reciprocal(ratios.sum(dim=-1, keepdim=True))
        common = (alphas * host_norms).sum(dim=-1)  # C
        update = _scaled_unit_sum(jacobian, norms, common)
        self._baseline, self._steps = baseline, self._steps + 1
        self._used()
        contributions = torch.where(host_norms > 0, common[..., None].expand_as(host_norms), 0.0)
        diagnostics = {
            "contribution_norms": contributions,
            "convergence_ratios": ratios,
            "common_norm": common,
        }
        return AggregationResult(update, torch.ones_like(losses), diagnostics)

    def auxiliary_loss(self, jacobian: Tensor, losses: Tensor, /) -> Tensor | None:
        """RotoGrad's alignment loss `sum_k sum_n ||R_k v_n - h_{n,k}||^2` (see the class) on the
        per-task gradients `J` `[K, *features.shape]` on the unrotated features (a 2-D `[K, n]` is
        one sample of n features), with a graph to `generators` only; None without rotations."""
        if self._generators is None:
            return None
        if jacobian.ndim < 2 or jacobian.shape[0] != self.num_tasks:
            raise MTLInputError(
                f"RotoGrad's alignment loss needs J of shape [K = {self.num_tasks}, *features.shape], got {tuple(jacobian.shape)}"
            )
        size = self._check_features(jacobian.shape[1:], "per-task gradients' features")
        gradients = jacobian.detach().reshape(self.num_tasks, -1, jacobian.shape[-1])  # [K, N, d]
        dtype = gradients.dtype
        norms = torch.linalg.vector_norm(gradients, dim=(-2, -1), dtype=torch.float64)
        mean_norm = torch.linalg.vector_norm(gradients.mean(dim=0), dtype=torch.float64)
        units = gradients * safe_reciprocal(norms).to(dtype)[:, None, None]
        target = mean_norm.to(dtype) * units.mean(dim=0)  # v [N, d]
        rotations = _rotation_matrices(self._generators).to(
            dtype=dtype, device=gradients.device
        )  # with the graph
        heads = (
            gradients[..., :size] @ rotations.detach().mT
        )  # h_{n,k} = R_k g_{n,k}, held fixed: [K, N, r]
        moved = target[..., :size] @ rotations.mT  # R_k v_n, [K, N, r]
        loss = (moved - heads).square().sum()
        rest = (
            (target[..., size:] - gradients[..., size:]).square().sum()
        )  # no graph: completes the reference's value
        return loss + rest


def _rotation_matrices(generators: Tensor) -> Tensor:
    """`expm(A - A^T)` `[K, r, r]` for `A` the strict lower triangles of `generators`."""
    lower = generators.tril(-1)
    return torch.linalg.matrix_exp(lower - lower.mT)


def _scaled_unit_sum(jacobian: Tensor, norms: Tensor, common: Tensor) -> Tensor:
    """`C sum_k g_k / ||g_k||` `[..., n]` in J's dtype (a zero row contributes nothing). Where a
    float32 row norm is not representable (beyond its range, or a nonzero norm that rounds to 0),
    the rows are normalised in float64 instead."""
    dtype = jacobian.dtype
    cast = norms.to(dtype)
    exact = bool(torch.isfinite(cast).all() and ((cast > 0) == (norms > 0)).all())
    work = dtype if exact else torch.float64
    rows = jacobian.to(work)
    units = rows * safe_reciprocal(norms.to(work))[..., None]
    scale = common.to(dtype=work, device=jacobian.device)
    update = scale[..., None] * units.sum(dim=-2)
    return update.to(dtype)
