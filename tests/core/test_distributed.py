"""`mtl_backward(..., process_group=...)` under torch.distributed (gloo, 2 CPU processes): after N
steps the parameters equal one process's run on the combined batch, within float64 rounding, for
DiBS-MTL, MGDA, Nash-MTL and RLW (seeded identically on every rank), UW and FAMO (its logit update
fed the ranks' mean recomputed losses), in full and representation mode, and with a DistributedDataParallel-wrapped model whose forward runs under `no_sync()`;
`TaskGradientAccumulator` over each rank's micro-batches equals one process on the combined batch.
Every rank raises the same error when one rank's loss is not finite, and with
`on_nonfinite="skip"` every rank skips when one rank's loss or gradient is not finite."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import core
from core.distributed import all_reduce_mean, transform_of_mean
from core.errors import NonFiniteLossError
from core.transforms import parse_transform

WORLD = 2
STEPS = 4
BATCH = 16
TASKS = 3
LR = 0.1
CASES = [  # (method, representation mode, wrap the model in DistributedDataParallel, task 0's loss transform)
    ("dibsmtl", False, False, None),
    ("mgda", False, False, None),
    ("nashmtl", False, False, None),
    ("rlw", False, False, None),
    ("uw", False, False, None),
    ("famo", False, False, None),
    ("dibsmtl", True, False, None),
    ("mgda", True, False, None),
    ("dibsmtl", False, True, None),
    ("mgda", False, False, "exp"),
    ("nashmtl", True, False, "power:3"),
    ("famo", False, False, "exp"),
]


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh()
        )
        self.heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(TASKS))

    def forward(self, x):
        features = self.encoder(x)
        return features, [head(features)[:, 0] for head in self.heads]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(BATCH, TASKS, generator=generator, dtype=torch.float64) * torch.tensor(
        [1.0, 10.0, 0.1], dtype=torch.float64
    )
    return x, y


def _method(name: str):
    options = {"rlw": {"generator": torch.Generator().manual_seed(7)}}.get(name, {})
    return core.make_method(name, num_tasks=TASKS, **options).to(
        dtype=torch.float64
    )  # UW's log-variances in float64


def train(
    name: str,
    representation: bool,
    wrap: bool,
    transform: str | None,
    x: torch.Tensor,
    y: torch.Tensor,
    group=None,
    per_shard: bool = False,
) -> list[torch.Tensor]:
    """STEPS steps of SGD with `mtl_backward`; with `group`, on this rank's shard only. `transform`
    replaces task 0's loss by h(loss) of the whole batch (`per_shard`: h of each shard's loss, wrong)."""
    h = parse_transform(transform) if transform else None
    torch.manual_seed(0)
    model = Model().double()
    method = _method(name)
    extra = list(method.parameters()) if isinstance(method, core.LossWeighting) else []
    optimizer = torch.optim.SGD([*model.parameters(), *extra], lr=LR)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if wrap else model
    for _ in range(STEPS):
        optimizer.zero_grad()
        if wrap:
            with (
                wrapped.no_sync()
            ):  # the engine reduces; DDP's hooks would never fire on autograd.grad
                features, outputs = wrapped(x)
        else:
            features, outputs = wrapped(x)
        losses = [torch.nn.functional.mse_loss(output, y[:, i]) for i, output in enumerate(outputs)]
        if h is not None:
            losses[0] = h(losses[0]) if per_shard else transform_of_mean(h, losses[0], group)
        core.mtl_backward(
            losses,
            model.encoder.parameters(),
            method,
            task_params=[head.parameters() for head in model.heads],
            representation=features if representation else None,
            process_group=group,
        )
        optimizer.step()
        if (
            method.needs_post_step_losses
        ):  # FAMO's logit step must see the whole batch's recomputed losses
            with torch.no_grad():
                _, outputs = model(x)
                new = torch.stack(
                    [
                        torch.nn.functional.mse_loss(output, y[:, i])
                        for i, output in enumerate(outputs)
                    ]
                )
                new = (
                    all_reduce_mean(new, group) if group is not None else new
                )  # the whole batch's, then h
                if h is not None:
                    new[0] = h(new[0])
            method.after_step(new)
    state = [
        value.clone() for value in method.state_dict().values() if isinstance(value, torch.Tensor)
    ]
    return [p.detach().clone() for p in [*model.parameters(), *extra]] + state


ACCUMULATED = ("dibsmtl", "pcgrad", "uw")


def accumulated_grads(
    name: str, x: torch.Tensor, y: torch.Tensor, group=None, micro_batches: int = 1
) -> list[torch.Tensor]:
    """The `.grad` of one `TaskGradientAccumulator` step over `micro_batches` equal pieces of (x, y)."""
    torch.manual_seed(0)
    model = Model().double()
    method = (
        core.PCGrad(generator=torch.Generator().manual_seed(3))
        if name == "pcgrad"
        else _method(name)
    )
    accumulator = core.TaskGradientAccumulator(
        model.encoder.parameters(), task_params=[head.parameters() for head in model.heads]
    )
    for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        _, outputs = model(xs)
        accumulator.add(
            [torch.nn.functional.mse_loss(output, ys[:, i]) for i, output in enumerate(outputs)],
            weight=1 / micro_batches,
        )
    accumulator.backward(method, process_group=group)
    own = list(method.parameters()) if isinstance(method, core.LossWeighting) else []
    return [p.grad.detach().clone() for p in [*model.parameters(), *own]]


def _skips(rank: int) -> dict[str, bool]:
    """Whether `on_nonfinite="skip"` skipped, when only rank 1 has a NaN loss (full mode) or an
    infinite per-task gradient (representation mode: each rank's own rows, a summed Gramian)."""
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    bad = float("nan") if rank == 1 else 2.0
    nan_loss = core.mtl_backward(
        [x.sum() * bad, (x**2).sum()],
        [x],
        core.make_method("mgda"),
        process_group=dist.group.WORLD,
        on_nonfinite="skip",
    )
    features = x * 1.0
    second = (
        torch.sqrt(features[0]) + 1.0 if rank == 1 else features[0] + 1.0
    )  # d sqrt / dz at 0 is infinite
    inf_gradient = core.mtl_backward(
        [features.sum(), second],
        [x],
        core.make_method("dibsmtl"),
        representation=features,
        process_group=dist.group.WORLD,
        on_nonfinite="skip",
    )
    return {
        "nan_loss": nan_loss.skipped,
        "inf_gradient": inf_gradient.skipped,
        "untouched": x.grad is None,
    }


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {case: train(*case, x[shard], y[shard], group=dist.group.WORLD) for case in CASES}
        results["per-shard"] = train(
            "mgda", False, False, "exp", x[shard], y[shard], group=dist.group.WORLD, per_shard=True
        )
        results |= {
            ("accumulated", name): accumulated_grads(
                name, x[shard], y[shard], dist.group.WORLD, micro_batches=2
            )
            for name in ACCUMULATED
        }
        bad = torch.tensor(
            [1.0, float("nan") if rank == 1 else 2.0, 3.0], dtype=torch.float64, requires_grad=True
        )
        try:  # rank 1's loss is NaN: both ranks must raise (none may hang in a collective)
            core.mtl_backward(
                list(bad * 1.0), [bad], core.make_method("mgda"), process_group=dist.group.WORLD
            )
            raised = None
        except NonFiniteLossError as error:
            raised = str(error)
        torch.save(
            {"results": results, "raised": raised, "skips": _skips(rank)},
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[
        f"{m}{'-repr' if r else ''}{'-ddp' if w else ''}{f'-{t}' if t else ''}"
        for m, r, w, t in CASES
    ],
)
def test_two_ranks_match_one_process_on_the_combined_batch(ranks, case):
    name, representation, _, transform = case
    single = train(name, representation, False, transform, *_data())  # one process: no DDP wrapper
    for rank in ranks:
        for got, expected in zip(rank["results"][case], single, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    for got, other in zip(ranks[0]["results"][case], ranks[1]["results"][case], strict=True):
        assert torch.equal(got, other), "the ranks took different steps"


@pytest.mark.slow
def test_a_transform_of_each_shards_loss_is_not_the_transform_of_the_batch_loss(ranks):
    """Why `transform_of_mean` exists: exp of each rank's loss trains a different model."""
    single = train("mgda", False, False, "exp", *_data())
    gap = max(
        float((a - b).abs().max())
        for a, b in zip(ranks[0]["results"]["per-shard"], single, strict=True)
    )
    assert gap > 5e-5  # 2.4e-4 measured


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_raises_on_every_rank(ranks):
    assert all(rank["raised"] is not None and "on some rank" in rank["raised"] for rank in ranks)


@pytest.mark.slow
def test_every_rank_skips_when_one_rank_is_not_finite(ranks):
    assert all(
        rank["skips"] == {"nan_loss": True, "inf_gradient": True, "untouched": True}
        for rank in ranks
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ACCUMULATED)
def test_accumulated_micro_batches_on_two_ranks_match_one_process(ranks, name):
    single = accumulated_grads(name, *_data())  # one process, the whole batch in one micro-batch
    for rank in ranks:
        for got, expected in zip(rank["results"][("accumulated", name)], single, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_the_shards_differ_so_the_reduction_matters():
    """Without the reduction a rank would follow its own shard: the check above could not pass by accident."""
    x, y = _data()
    whole, half = (
        train("mgda", False, False, None, x, y),
        train("mgda", False, False, None, x[: BATCH // 2], y[: BATCH // 2]),
    )
    assert max(float((a - b).abs().max()) for a, b in zip(whole, half)) > 1e-3


def test_a_process_group_without_torch_distributed_is_a_clear_error():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        core.mtl_backward(
            [x.sum(), (x**2).sum()], [x], core.make_method("mgda"), process_group=object()
        )


@pytest.mark.slow
def test_multimnist_with_nproc_2_matches_one_process(tmp_path):
    """`python -m benchmarks multimnist --nproc 2` (torchrun, gloo): the same losses, weights and
    test metrics as one process, to float32 rounding, also with exp of one task's loss (applied to
    the whole batch's loss, not to each rank's); stored apart (its run ids differ)."""
    import json

    from benchmarks.__main__ import main

    flags = [
        "multimnist",
        "--methods",
        "dibsmtl,mgda",
        "--seeds",
        "0",
        "--transforms",
        "none,left:exp",
        "--epochs",
        "1",
        "--max-batches",
        "3",
        "--no-single-task",
    ]
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    assert main([*flags, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0

    def runs(store: str) -> dict:
        records = [
            json.loads(path.read_text())
            for path in (tmp_path / store / "multimnist" / "runs").glob("*.json")
        ]
        return {(r["spec"]["method"], r["spec"]["transform"]): r for r in records}

    one, two = runs("one"), runs("two")
    assert (
        sorted(one)
        == sorted(two)
        == sorted((m, t) for m in ("dibsmtl", "mgda") for t in ("none", "left:exp"))
    )
    for key, record in one.items():
        assert record["run_id"] != two[key]["run_id"]  # the data-parallel run has its own id
        a, b = record["result"]["history"][0], two[key]["result"]["history"][0]
        for field in ("train_loss", "mean_weights"):
            torch.testing.assert_close(
                torch.tensor(b[field]), torch.tensor(a[field]), rtol=1e-5, atol=1e-8
            )
        assert b["test"] == a["test"]


@pytest.mark.slow
def test_the_readme_torchrun_example_runs_on_two_ranks(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    [script] = re.findall(r"```python torchrun\n(.*?)```", readme, flags=re.DOTALL)
    (tmp_path / "train.py").write_text(script)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(tmp_path / "train.py"),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-6000:]
    # The ranks share one pipe and print writes the text and its newline separately, so lines may
    # run together; each message itself is one write below PIPE_BUF and stays whole.
    reports = dict(re.findall(r"rank (\d): weights (\[[^\]]*\])", done.stdout))
    assert sorted(reports) == ["0", "1"], done.stdout[-2000:]
    assert reports["0"] == reports["1"]  # the same weights on both ranks
