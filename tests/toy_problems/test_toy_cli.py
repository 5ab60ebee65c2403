"""`python -m toy_problems`: the inspect command end to end (files, table, errors) and the runner it uses."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

from core.jacobian import batched_task_gradients, gramian
from core.pareto.stationarity import stationarity
from core.registry import available_methods, make_method
from toy_problems import ZDT1, TwoTaskToy
from toy_problems.inspect_cli import PROBLEMS, build_problem, main
from toy_problems.runner import run_toy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
README = Path(__file__).resolve().parents[2] / "docs" / "toy_inspect.md"  # the inspect example


def _inspect(tmp_path, *arguments: str) -> int:
    return main(["inspect", *arguments, "--out", str(tmp_path), "--quiet"])


def _folder(root: Path) -> Path:
    """The one inspection folder in the result store `root` (ROOT/toy_inspect/PROBLEM/<settings>)."""
    (folder,) = root.glob("toy_inspect/*/*")
    return folder


def _table_rows(printed: str, method: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith(f"{method} ")]


def test_two_task_toy_with_a_transform_writes_everything(tmp_path, capsys) -> None:
    readme = [
        line
        for line in README.read_text().splitlines()
        if line.startswith("python -m toy_problems inspect ")
    ]
    assert len(readme) == 1, "the README lost its inspect example"
    assert (
        main(
            [
                *shlex.split(readme[0])[3:],
                "--steps",
                "40",
                "--out",
                str(tmp_path / "store"),
                "--quiet",
            ]
        )
        == 0
    )  # the README's command
    printed = capsys.readouterr().out
    out = _folder(tmp_path / "store")
    for name in (
        "inspect.json",
        "trajectories.png",
        "trajectories_untransformed.png",
        "convergence.png",
    ):
        assert (out / name).stat().st_size > 0
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not [
        p for p in out.iterdir() if p.name.startswith(".")
    ]  # the staging folder (inside --out) is gone

    result = json.loads((out / "inspect.json").read_text())
    config = result["config"]
    assert (
        config["problem"] == "two_task_toy"
        and config["transforms"] == {"0": "exp"}
        and config["steps"] == 40
    )
    assert (
        config["methods"] == ["dibsmtl", "dibsmtl:steps=5", "ls", "mgda", "nashmtl"]
        and len(config["starts"]) == 5
    )
    problem = TwoTaskToy()
    for name in ("dibsmtl", "ls"):
        data = result["results"][name]
        assert len(data["runs"]) == 5 and len(_table_rows(printed, name)) == 5
        for run in data["runs"]:
            end = torch.tensor(run["end"], dtype=torch.float64)
            losses = problem(end)
            assert torch.allclose(
                torch.tensor(run["end_losses"], dtype=torch.float64), losses
            )  # untransformed
            assert math.isclose(
                run["end_losses_transformed"][0], math.exp(run["end_losses"][0]), rel_tol=1e-9
            )
            assert run["end_losses_transformed"][1] == pytest.approx(run["end_losses"][1])
            _, jacobian = batched_task_gradients(problem, end)
            assert run["final_residual"] == pytest.approx(
                float(stationarity(gramian(jacobian))[1]), rel=1e-9
            )
            assert 0 <= run["min_residual"] <= run["final_residual"] + 1e-15
            assert run["distance_to_front"] >= 0 and run["favoured_task"] in (0, 1, "balanced")
        trajectory = data["trajectory"]
        assert trajectory["steps"][0] == 0 and trajectory["steps"][-1] == 40
        running = torch.tensor(trajectory["running_min_residual"])
        assert bool((running[1:] <= running[:-1]).all()) and bool(
            (running <= torch.tensor(trajectory["residual"])).all()
        )
        assert (
            len(trajectory["losses"])
            == len(trajectory["losses_transformed"])
            == len(trajectory["distance_to_front"])
            == 41
        )
    assert "favours" in printed and "transforms 0:exp" in printed and "wrote" in printed

    # rerun into a folder without the transform (another folder: other settings): DiBS-MTL ends
    # where it did (it only uses gradient directions) while linear scalarisation does not
    assert (
        _inspect(
            tmp_path / "nominal",
            "--problem",
            "two_task_toy",
            "--methods",
            "dibsmtl,ls",
            "--steps",
            "40",
        )
        == 0
    )
    nominal_folder = _folder(tmp_path / "nominal")
    assert not (nominal_folder / "trajectories_untransformed.png").exists()
    nominal = json.loads((nominal_folder / "inspect.json").read_text())
    assert (
        nominal["config"]["transforms"] == {}
        and "end_losses_transformed" not in nominal["results"]["ls"]["runs"][0]
    )
    for name, gap_is_zero in (("dibsmtl", True), ("ls", False)):
        gaps = [
            math.dist(a["end"], b["end"])
            for a, b in zip(result["results"][name]["runs"], nominal["results"][name]["runs"])
        ]
        assert (max(gaps) < 1e-9) == gap_is_zero


def test_the_default_folder_is_named_after_the_settings(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    flags = ["inspect", "--problem", "two_task_toy", "--methods", "ls", "--steps", "3", "--quiet"]
    assert (
        main(flags) == 0
        and main([*flags, "--lr", "0.01"]) == 0
        and main([*flags, "--transforms", "0:exp"]) == 0
    )
    assert main(flags) == 0  # the same settings: the same folder again
    folders = sorted(
        p.name for p in (tmp_path / "results" / "toy_inspect" / "two_task_toy").iterdir()
    )
    assert len(folders) == 3, folders
    assert sum(name.startswith("3steps-adam-lr0.001-seed0-") for name in folders) == 2
    assert sum(name.startswith("3steps-adam-lr0.01-seed0-") for name in folders) == 1
    assert (
        "wrote results/toy_inspect/two_task_toy/3steps-adam-lr0.001-seed0-"
        in capsys.readouterr().out
    )


def test_the_api_is_the_command_without_files(tmp_path, capsys) -> None:
    """`run(InspectConfig(...))` returns what the command writes and prints; the flags' defaults are the config's."""
    from toy_problems.inspect_cli import InspectConfig, build_parser, inspect_folder, run

    args = build_parser().parse_args(["inspect", "--problem", "two_task_toy"])
    parsed = InspectConfig.from_args(args)
    assert parsed == InspectConfig("two_task_toy", quiet=False)  # every other default agrees
    config = InspectConfig("two_task_toy", methods="ls,dibsmtl", transform=("0:exp",), steps=20)
    result = run(config)
    assert (
        main(
            [
                "inspect",
                "--problem",
                "two_task_toy",
                "--methods",
                "ls,dibsmtl",
                "--transforms",
                "0:exp",
                "--steps",
                "20",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    assert result.table in capsys.readouterr().out
    folder = _folder(tmp_path)
    assert folder == inspect_folder(tmp_path, config)  # the store's folder of these settings
    written = json.loads((folder / "inspect.json").read_text())["results"]
    returned = json.loads(json.dumps(result.payload["results"]))
    for method in ("ls", "dibsmtl"):  # everything but the run times
        assert written[method].pop("seconds") > 0 and returned[method].pop("seconds") > 0
    assert written == returned
    assert sorted(result.figures) == [
        "convergence.png",
        "trajectories.png",
        "trajectories_untransformed.png",
    ]


def test_an_unwritable_out_fails_before_any_compute(tmp_path, monkeypatch, capsys) -> None:
    import toy_problems.inspect_cli as inspect_cli

    def no_compute(*args, **kwargs):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(inspect_cli, "run", no_compute)
    (tmp_path / "a_file").write_text("")
    assert _inspect(tmp_path / "a_file" / "out", "--problem", "two_task_toy") == 2
    assert "is not a folder" in capsys.readouterr().err


def test_zdt2_variant_with_stateful_methods_and_drawn_starts(tmp_path, capsys) -> None:
    arguments = [
        "--problem",
        "zdt2_variant",
        "--methods",
        "mgda,famo,uw,dwa",
        "--starts",
        "3",
        "--seed",
        "1",
        "--steps",
        "25",
    ]
    assert _inspect(tmp_path, *arguments) == 0
    printed = capsys.readouterr().out
    folder = _folder(tmp_path)
    assert not (folder / "trajectories_untransformed.png").exists()
    result = json.loads((folder / "inspect.json").read_text())
    assert result["config"]["transforms"] == {} and result["config"]["n_var"] == 3
    drawn = build_problem("zdt2_variant").starts(
        3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    assert torch.allclose(torch.tensor(result["config"]["starts"], dtype=torch.float64), drawn)
    for name in ("mgda", "famo", "uw", "dwa"):
        runs = result["results"][name]["runs"]
        assert len(runs) == 3 and len(_table_rows(printed, name)) == 3
        for run in runs:
            assert math.isfinite(run["final_residual"]) and math.isfinite(run["distance_to_front"])
            assert run["end"] != run["start"]  # every method moved
    assert (folder / "convergence.png").read_bytes()[:8] == PNG_MAGIC


def test_list_shows_every_problem_and_method(capsys) -> None:
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    for name in PROBLEMS:
        assert name in printed
    assert all(
        f"\n  {name} " in printed for name in available_methods()
    )  # one line per method (tests/docs/test_command_lines.py)
    assert "zdt2_variant         3     2  yes" in printed and "nonconvex" in printed


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--problem", "nope"], "two_task_toy"),
        (
            ["--problem", "two_task_toy", "--methods", "ls,foo"],
            "choose one of: aligned_mtl, cagrad",
        ),
        (["--problem", "two_task_toy", "--methods", "cagrad:c=inf"], "c (the radius"),
        (["--problem", "two_task_toy", "--methods", "dibsmtl:step=5"], "no hyperparameter 'step'"),
        (["--problem", "two_task_toy", "--transforms", "0:cube"], "valid forms"),
        (["--problem", "two_task_toy", "--transforms", "0:log"], "Log() is defined only for t > 0"),
        (["--problem", "two_task_toy", "--transforms", "2:exp"], "tasks are 0..1"),
        (["--problem", "two_task_toy", "--transforms", "0:exp,0:log"], "two transforms"),
        (["--problem", "two_task_toy", "--start", "11,0"], "outside the problem's bounds"),
        (["--problem", "two_task_toy", "--steps", "0"], "--steps must be a positive integer"),
        (["--problem", "two_task_toy", "--n-var", "3"], "--n-var applies to: fonseca_fleming"),
        (
            [
                "--problem",
                "two_task_toy",
                "--start",
                "0.1,0.1",
                "--transforms",
                "1:log",
                "--steps",
                "300",
            ],
            "failed during the run",
        ),
        (
            [
                "--problem",
                "bargaining",
                "--transforms",
                "0:log",
                "--start",
                "0.5",
                "--start",
                "0.5,0",
            ],
            "expected 1 comma-separated",
        ),
        (["--problem", "quadratic", "--n-obj", "0"], "n_var and n_obj must be positive"),
        (["--problem", "bargaining", "--methods", "dibsmtl,dibsmtl"], "twice"),
        (["--problem", "bargaining", "--optimizer", "lbfgs"], "choose from 'adam', 'sgd'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(
    tmp_path, capsys, arguments, expected
) -> None:
    earlier = tmp_path / "out" / "toy_inspect" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "inspect.json").write_text("earlier result")
    steps = [] if "--steps" in arguments else ["--steps", "5"]
    assert main(["inspect", *arguments, *steps, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith("error: ") and "\n" not in error and expected in error
    assert captured.out == ""
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == [
        "out",
        "out/toy_inspect",
        "out/toy_inspect/earlier",
        "out/toy_inspect/earlier/inspect.json",
    ]
    assert (earlier / "inspect.json").read_text() == "earlier result"


def test_an_out_that_names_an_old_inspection_folder_gets_a_note(tmp_path, capsys) -> None:
    """`--out` named the folder itself before it named the store's root: an old inspection there
    is left as it is, and the note says where the new one went."""
    (tmp_path / "inspect.json").write_text("an inspection of the old layout")
    assert _inspect(tmp_path, "--problem", "bargaining", "--methods", "ls", "--steps", "5") == 0
    assert "--out is the root of the result store" in capsys.readouterr().err
    assert (tmp_path / "inspect.json").read_text() == "an inspection of the old layout" and _folder(
        tmp_path
    ).is_dir()


def test_a_long_inspection_announces_its_duration(monkeypatch) -> None:
    from toy_problems import inspect_cli
    from toy_problems.inspect_cli import InspectConfig

    assert (
        inspect_cli.expected_duration(InspectConfig("two_task_toy"), 3) is None
    )  # the default: seconds
    line = inspect_cli.expected_duration(InspectConfig("two_task_toy", steps=35_000), 36)
    assert line.startswith(
        "36 methods x 35,000 steps, expected about 3 min on the project's 2-core CPU machine"
    )
    announced = []
    monkeypatch.setattr(inspect_cli, "SECONDS_PER_METHOD_STEP", 1.0)
    inspect_cli.run(InspectConfig("bargaining", methods="ls", steps=40), on_start=announced.append)
    assert len(announced) == 1 and announced[0].startswith(
        "1 methods x 40 steps, expected about 40 s"
    )


@pytest.mark.parametrize("spec", ["famo", "uw", "dwa", "nashmtl", "dwa:window=2", "ls"])
def test_stateful_methods_run_batched_as_one_run_per_start(spec) -> None:
    """Every method keeps its state per row, so the batched run equals one run per start."""
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=torch.float64)[:3]
    shifted = lambda x: problem(x) + 20.0  # noqa: E731 - positive losses (DWA and FAMO need them)
    batched = run_toy(
        shifted, starts, make_method(spec, num_tasks=2), num_steps=30, lr=0.05, record_every=5
    )
    for row in range(3):
        alone = run_toy(
            shifted,
            starts[row : row + 1],
            make_method(spec, num_tasks=2),
            num_steps=30,
            lr=0.05,
            record_every=5,
        )
        torch.testing.assert_close(
            batched.points[:, row], alone.points[:, 0], rtol=1e-12, atol=1e-12
        )


def test_run_toy_follows_the_engine_for_a_learnable_method() -> None:
    """Uncertainty weighting in the runner equals a plain loop of `core.mtl_backward` + Adam, which
    learns the log-variances from the weighted loss plus the penalty."""
    problem = TwoTaskToy()
    start = problem.default_starts(dtype=torch.float64)[1]
    runner = run_toy(problem, start[None], make_method("uw", num_tasks=2), num_steps=25, lr=0.05)
    method = make_method("uw", num_tasks=2).to(dtype=torch.float64)
    x = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x, *method.parameters()], lr=0.05)
    for _ in range(25):
        optimizer.zero_grad()
        from core import mtl_backward

        mtl_backward(problem(x), [x], method)
        optimizer.step()
    torch.testing.assert_close(runner.points[-1, 0], x.detach(), rtol=1e-12, atol=1e-12)


def test_projected_runs_stay_in_the_box() -> None:
    problem = ZDT1(n_var=4)
    starts = problem.starts(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method in (make_method("mgda"), make_method("uw", num_tasks=2)):
        trajectory = run_toy(
            problem, starts, method, num_steps=50, lr=0.05, project=problem.project
        )
        assert bool(((trajectory.points >= 0) & (trajectory.points <= 1)).all())
        assert bool(torch.isfinite(trajectory.losses).all())
        assert bool(
            (trajectory.points[-1, :, 1:] == 0).any()
        )  # the lower bound is reached and kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inspect_runs_on_cuda(tmp_path, capsys) -> None:
    arguments = [
        "--problem",
        "two_task_toy",
        "--methods",
        "dibsmtl,ls,uw",
        "--transforms",
        "0:exp",
        "--steps",
        "5",
        "--device",
        "cuda",
    ]
    assert _inspect(tmp_path, *arguments) == 0
    assert (
        json.loads((_folder(tmp_path) / "inspect.json").read_text())["config"]["device"] == "cuda"
    )


def test_ctrl_c_says_nothing_was_written(tmp_path, capsys, monkeypatch) -> None:
    from toy_problems import inspect_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_cli, "run_measured", interrupted)
    assert (
        inspect_cli.main(
            [
                "inspect",
                "--problem",
                "two_task_toy",
                "--methods",
                "ls",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 130
    )
    assert (
        "run the same command again" in capsys.readouterr().err and not (tmp_path / "out").exists()
    )
