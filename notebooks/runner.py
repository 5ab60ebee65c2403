"""Execute the notebooks with nbclient and collect their figures under one folder.

Sources are jupytext "percent" scripts (`notebooks/NN_name.py`): plain Python with `# %%` cell
markers, so git diffs and ruff see code, not JSON, and no outputs are ever committed. The runner
turns each into a notebook (jupytext), executes it in a fresh kernel (nbclient) with the
environment variables of `notebooks.support`, and writes the executed `.ipynb` (with its outputs)
and every figure under one folder. A cell error, a timeout or a declared figure the notebook did
not write fails that notebook; the others still run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from notebooks.support import FIGURES_VARIABLE, QUICK_VARIABLE, RESULTS_VARIABLE

SOURCE_FOLDER = Path(__file__).resolve().parent
REPOSITORY = SOURCE_FOLDER.parent
PUBLISHED_FOLDER = REPOSITORY / "docs" / "figures"


@dataclass(frozen=True)
class Notebook:
    """One notebook: its source stem, what it shows, and the figures (PNG stems) it must write."""

    name: str
    summary: str
    figures: tuple[str, ...]

    @property
    def source(self) -> Path:
        return SOURCE_FOLDER / f"{self.name}.py"


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook(
        "01_invariance_toy",
        "invariance under monotone transforms on the DiBS-MTL toy: every method's trajectories, nominal vs transformed, and the endpoint gaps",
        ("toy_nominal", "toy_transformed", "toy_transformed_scaled", "toy_invariance_gap"),
    ),
    Notebook(
        "02_convergence",
        "convergence on nonconvex toys: Pareto-stationarity residuals and their running minimum, DiBS vs the normalised-sum stall",
        ("convergence_nonconvex", "dibs_fairness", "dibs_mtl_convergence"),
    ),
    Notebook(
        "03_pareto_exploration",
        "continuous Pareto exploration: tangents vs gradients and the explored front on the ZDT2 variant, the explored MultiMNIST front and its hypervolume",
        ("zdt2_tangents", "zdt2_front", "pareto_multimnist_front"),
    ),
    Notebook(
        "04_random_weighting",
        "the random-weighting litmus test: RLW (5 distributions) and RGW against equal weighting on MultiMNIST and Auto MPG",
        ("random_weighting_delta_p",),
    ),
    Notebook(
        "05_benchmark_tables",
        "the benchmark tables read from the result store, with the Delta_m% and Mean Rank plots",
        ("multimnist_delta_m", "multimnist_mean_rank"),
    ),
)
"""Every notebook, in the order they run (a test checks that each source file is listed)."""

PUBLISHED: tuple[str, ...] = (
    "toy_nominal",
    "toy_transformed",
    "toy_invariance_gap",
    "convergence_nonconvex",
    "dibs_fairness",
    "zdt2_front",
    "pareto_multimnist_front",
    "random_weighting_delta_p",
    "multimnist_delta_m",
    "multimnist_mean_rank",
)
"""The published figures (docs/figures.md, README): `--publish` copies them into docs/figures/ after a full run."""


@dataclass
class Execution:
    """What running one notebook gave."""

    notebook: Notebook
    executed: Path
    seconds: float
    figures: list[Path] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the kernels started inside the block (they inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _first_error(notebook) -> str | None:
    """The first error output of an executed notebook, as 'ename: evalue', or None."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
    return None


def execute(
    notebook: Notebook, /, *, quick: bool, results: Path, out: Path, timeout: float = 900
) -> Execution:
    """Run `notebook` in a fresh kernel; write `out/<name>.ipynb` (also when a cell fails, to show
    where) and the figures into `out/figures/`."""
    import jupytext
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from toy_problems.store import write_text_atomic

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    node = jupytext.read(notebook.source, fmt="py:percent")
    node.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    variables = {
        QUICK_VARIABLE: "1" if quick else "0",
        RESULTS_VARIABLE: str(Path(results).resolve()),
        FIGURES_VARIABLE: str(figures.resolve()),
        "MPLBACKEND": "Agg",  # figures are shown from their saved PNGs, never twice
    }
    began = time.time()
    error = None
    with _environment(variables), tempfile.TemporaryDirectory(prefix="mtl-kernel-") as sockets:
        # local IPC sockets in a private folder where the OS has them: no TCP ports, and no warning about unencrypted TCP
        ipc = (
            {"transport": "ipc", "ip": str(Path(sockets) / "kernel")} if os.name == "posix" else {}
        )
        kernel = KernelManager(kernel_name="python3", **ipc)
        client = NotebookClient(
            node, km=kernel, timeout=timeout, resources={"metadata": {"path": str(REPOSITORY)}}
        )
        try:
            client.execute()
        except CellTimeoutError as failure:
            error = f"a cell ran longer than {timeout:g} s: {str(failure).splitlines()[0]}"
        except (CellExecutionError, DeadKernelError) as failure:
            error = _first_error(node) or str(failure).strip().splitlines()[-1]
    seconds = time.time() - began
    executed = write_text_atomic(out / f"{notebook.name}.ipynb", nbformat.writes(node))
    written = [figures / f"{name}.png" for name in notebook.figures]
    stale = [
        path.name for path in written if not path.is_file() or path.stat().st_mtime < began - 1
    ]
    if error is None and stale:
        error = f"the notebook ran but did not write {', '.join(stale)} into {figures}"
    return Execution(notebook, executed, seconds, written, error)


def select(names: Sequence[str] | None, /) -> list[Notebook]:
    """The notebooks named (by full name or by number prefix, e.g. '01'), or all of them."""
    if not names:
        return list(NOTEBOOKS)
    chosen = []
    for name in names:
        matches = [nb for nb in NOTEBOOKS if nb.name == name or nb.name.split("_", 1)[0] == name]
        if not matches:
            known = ", ".join(nb.name for nb in NOTEBOOKS)
            raise ValueError(f"no notebook {name!r}; known: {known} (or their number prefixes)")
        chosen += [nb for nb in matches if nb not in chosen]
    return chosen


def publish(
    figures: Path, /, names: Sequence[str] = PUBLISHED, target: Path = PUBLISHED_FOLDER
) -> list[Path]:
    """Copy the published figures from a full run's figure folder into docs/figures/ (atomically)."""
    from toy_problems.store import copy_file_atomic

    missing = [name for name in names if not (figures / f"{name}.png").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not in {figures}: run the notebooks that make them first"
        )
    return [copy_file_atomic(figures / f"{name}.png", target / f"{name}.png") for name in names]
