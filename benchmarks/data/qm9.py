"""QM9 as PyTorch Geometric (PyG) stores it, read without torch_geometric (spec dibs.md §6.4,
random_weighting_baselines_metrics.md §5.3).

**Where the data lives.** The folder the user gives (`root`, the `root` of
`torch_geometric.datasets.QM9(root)`) holds

- `<root>/processed/data_v3.pt`: the processed dataset, read first. `QM9.processed_file_names`
  is `"data_v3.pt"` (torch_geometric 2.8.1, `torch_geometric/datasets/qm9.py`), not `qm9_v3.pt`.
- `<root>/raw/qm9_v3.pt`: the pre-processed download that PyG uses when RDKit is missing
  (`QM9.raw_file_names` without RDKit; `QM9.process` turns it into the processed file with
  `[Data(**d) for d in torch.load(raw)]`): a plain list of per-molecule dicts. Read as a fallback
  when the processed file is absent.

**Saved structure of the processed file** (torch_geometric 2.8.1,
`torch_geometric/data/in_memory_dataset.py::InMemoryDataset.save`):
`torch.save((data.to_dict(), slices, data.__class__), path)` where `data, slices =
InMemoryDataset.collate(data_list)` (`collate(..., increment=False, add_batch=False)`):

- `data.to_dict()` is a plain dict, in the order Data's constructor sets it: `x` float32 [sum N, 11],
  `edge_index` int64 [2, sum E] with **per-molecule (not incremented) node indices**, `edge_attr`
  float32 [sum E, 4], `y` float32 [M, 19] (one [1, 19] row per molecule), `pos` float32 [sum N, 3]
  (Angstrom), `z` int64 [sum N], `smiles` list[str], `name` list[str], `idx` int64 [M];
- `slices` maps every key to int64 [M + 1] cumulative offsets along its concatenation dimension
  (`x`, `pos`, `z`: nodes; `edge_index`, `edge_attr`: edges; `y`, `smiles`, `name`, `idx`: molecules).
  With a single molecule PyG stores `slices = None`;
- `data.__class__` is pickled as the global `torch_geometric.data.data.Data`.
- Older files (PyG < 2.4) hold the 2-tuple `(Data, slices)` with a pickled `Data` object whose
  `_store` (`torch_geometric.data.storage.GlobalStorage`) keeps the dict in `_mapping` (PyG 1.x kept
  the attributes directly on the object); both are read too (as `InMemoryDataset.load` does).

Node features x (`QM9.process`): one-hot atom type H, C, N, O, F (5), atomic number, aromatic,
sp, sp2, sp3, number of bonded hydrogens: 11 columns. Bond features: one-hot single, double,
triple, aromatic (4). Targets: the 19 columns of the PyG docstring, energies in eV (converted from
Hartree and kcal/mol in `QM9.process`).

**Reading without torch_geometric.** `torch.load` runs with `pickle_module` set to a restricted
unpickler: it allows only tensor rebuilding, storages, dtypes, `torch.Size` and
`collections.OrderedDict`, and maps every `torch_geometric.*` global to a minimal stand-in class
that keeps the attributes it is given; anything else is refused.

**Edge features the reference model consumes** (Nash-MTL `experiments/quantum_chemistry/trainer.py`:
`T.Compose([MyTransform(targets), Complete(), T.Distance(norm=False)])`):
`Complete` (`experiments/quantum_chemistry/utils.py`) replaces the bonds by every ordered pair
(i, j), i != j, in row-major order, with the bond's one-hot at bonded pairs and zeros elsewhere;
`Distance(norm=False)` appends |pos_j - pos_i| (Angstrom, unnormalised). So the model sees 11 node
features and **5 edge features** (4 bond one-hot + distance), matching the edge network
Linear(5 -> 128). `collate` builds exactly this for a whole batch at once.

Split and normalisation (spec §6.4 / §5.3): a seeded shuffle, test the first 10k, validation the
next 10k, train the rest; the 11 targets [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11] standardised with
the **training split's** mean and (unbiased) std. Deliberate deviations: the shuffle is
`torch.randperm` with its own generator (the reference's `dataset.shuffle()` draws from the global
RNG after model creation, so its permutation cannot be reproduced); and the reference computes its
statistics from `train_dataset.data.y`, which for a PyG index subset is the storage of *all*
molecules, so its "train" statistics are in fact whole-dataset ones: `normalisation="all"`
reproduces that.

`write_fixture` writes a small synthetic QM9 in exactly this layout (processed and raw files),
without importing torch_geometric, for the tests.
"""

from __future__ import annotations

import functools
import logging
import pickle
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from benchmarks.data.errors import DatasetError
from core.errors import MTLInputError

logger = logging.getLogger(__name__)

PROCESSED_FILE = Path("processed") / "data_v3.pt"
"""PyG's processed QM9 (`QM9.processed_file_names`), relative to the dataset root."""
RAW_FILE = Path("raw") / "qm9_v3.pt"
"""PyG's pre-processed download used without RDKit (`QM9.raw_file_names`), relative to the root."""
NODE_FEATURES = 11
BOND_FEATURES = 4
EDGE_FEATURES = BOND_FEATURES + 1
"""Bond one-hot plus the interatomic distance (`Complete` + `Distance(norm=False)`)."""
NUM_TARGETS = 19
TARGET_COLUMNS = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
"""The 11 regression targets of the Nash-MTL/FAMO/DiBS-MTL protocol (gap, 4, and the
non-atomisation energies 7-10 and rotational constants 16-18 are left out)."""
TEST_SIZE = 10_000
VAL_SIZE = 10_000
_REQUIRED = ("x", "edge_index", "edge_attr", "y", "pos")
_DATA_REFERENCE = ("torch_geometric.data.data", "Data")


def _expected(root: Path) -> str:
    return (
        f"expected {root / PROCESSED_FILE} (PyTorch Geometric's processed QM9, written by "
        f"torch_geometric.datasets.QM9(root)) or {root / RAW_FILE} (PyG's pre-processed download)"
    )


# --------------------------------------------------------------------------- restricted pickle


class PyGStandIn:
    """A minimal stand-in for a pickled torch_geometric object (or class): it keeps whatever
    attributes the pickle gives it and runs no torch_geometric code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> PyGStandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


@functools.cache
def _stand_in(module: str, name: str) -> type[PyGStandIn]:
    return type(name, (PyGStandIn,), {"__module__": module, "__qualname__": name})


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for PyG dataset files: tensors, storages (resolved by `torch.load` itself),
    dtypes, `torch.Size`, `OrderedDict`, and `torch_geometric.*` globals as `PyGStandIn`
    subclasses; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch_geometric" or module.startswith("torch_geometric."):
            return _stand_in(module, name)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name}: not part of a PyG dataset file"
        )


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle = types.ModuleType(f"{__name__}.restricted_pickle")
"""A `pickle_module` for `torch.load` whose `Unpickler` is `RestrictedUnpickler`."""
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]


class _PyGReferencePickler(
    pickle._Pickler
):  # the Python pickler: its save_global can be overridden
    """Pickles the stand-ins of `_PICKLED_AS` as references to the torch_geometric globals they
    stand for (the C pickler would import torch_geometric to check the reference)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        reference = _PICKLED_AS.get(obj)
        if reference is None:
            super().save_global(obj, name)
            return
        module, qualname = reference
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


_PICKLED_AS: dict[Any, tuple[str, str]] = {_stand_in(*_DATA_REFERENCE): _DATA_REFERENCE}
_reference_pickle = types.ModuleType(f"{__name__}.reference_pickle")
_reference_pickle.Pickler = _PyGReferencePickler  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- molecules


@dataclass(frozen=True)
class MoleculeGraph:
    """One molecule as PyG's QM9 stores it: node features `x` [N, 11], bonds `edge_index` [2, E]
    (local indices, both directions), bond one-hot `edge_attr` [E, 4], targets `y` [1, 19],
    positions `pos` [N, 3] (Angstrom) and atomic numbers `z` [N] (None where the file has none)."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    y: Tensor
    pos: Tensor
    z: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


class QM9Molecules:
    """All molecules of a QM9 file in PyG's collated form: concatenated tensors plus the node and
    edge offsets (`node_ptr`, `edge_ptr`, [M + 1]); `graph(i)` cuts out molecule i."""

    def __init__(
        self,
        *,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        y: Tensor,
        pos: Tensor,
        z: Tensor | None,
        node_ptr: Tensor,
        edge_ptr: Tensor,
        source: Path,
    ) -> None:
        self.x, self.edge_index, self.edge_attr, self.y, self.pos, self.z = (
            x,
            edge_index,
            edge_attr,
            y,
            pos,
            z,
        )
        self.node_ptr, self.edge_ptr, self.source = node_ptr, edge_ptr, source
        self._nodes = node_ptr.tolist()
        self._edges = edge_ptr.tolist()

    def __len__(self) -> int:
        return self.y.shape[0]

    def graph(self, index: int, /) -> MoleculeGraph:
        """Molecule `index` as PyG's `dataset[index]` (before any transform) returns it."""
        a, b = self._nodes[index], self._nodes[index + 1]
        c, d = self._edges[index], self._edges[index + 1]
        return MoleculeGraph(
            x=self.x[a:b],
            edge_index=self.edge_index[:, c:d],
            edge_attr=self.edge_attr[c:d],
            y=self.y[index : index + 1],
            pos=self.pos[a:b],
            z=None if self.z is None else self.z[a:b],
        )


def _attributes(data: Any, path: Path) -> dict[str, Any]:
    """The key -> value dict of a saved `Data` (a dict, or a stand-in of a pickled object)."""
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, PyGStandIn):
        store = data.__dict__.get("_store")
        if isinstance(store, PyGStandIn) and isinstance(store.__dict__.get("_mapping"), Mapping):
            return dict(store.__dict__["_mapping"])  # PyG 2.x object
        return {
            key: value for key, value in data.__dict__.items() if not key.startswith("_")
        }  # PyG 1.x
    raise DatasetError(
        f"{path}: the collated data is a {type(data).__name__}, expected a dict or a torch_geometric Data"
    )


def _tensor(
    mapping: Mapping[str, Any],
    key: str,
    path: Path,
    *,
    ndim: int,
    dtype: torch.dtype,
    width: int | None = None,
) -> Tensor:
    value = mapping.get(key)
    if not isinstance(value, Tensor):
        raise DatasetError(
            f"{path}: '{key}' is missing or not a tensor; a QM9 file has {', '.join(_REQUIRED)}"
        )
    if value.ndim != ndim or (
        width is not None and value.shape[-1 if key != "edge_index" else 0] != width
    ):
        raise DatasetError(f"{path}: '{key}' has shape {tuple(value.shape)}, which is not QM9's")
    return value.to(dtype)


def _offsets(slices: Mapping[str, Any], key: str, path: Path) -> Tensor:
    value = slices.get(key)
    if not isinstance(value, Tensor) or value.ndim != 1 or value.numel() < 2:
        raise DatasetError(f"{path}: slices['{key}'] is missing or not a 1-D offset tensor")
    return value.long()


def _from_collated(
    mapping: Mapping[str, Any], slices: Mapping[str, Any] | None, path: Path
) -> QM9Molecules:
    x = _tensor(mapping, "x", path, ndim=2, dtype=torch.float32, width=NODE_FEATURES)
    edge_index = _tensor(mapping, "edge_index", path, ndim=2, dtype=torch.long, width=2)
    edge_attr = _tensor(
        mapping, "edge_attr", path, ndim=2, dtype=torch.float32, width=BOND_FEATURES
    )
    y = _tensor(mapping, "y", path, ndim=2, dtype=torch.float32, width=NUM_TARGETS)
    pos = _tensor(mapping, "pos", path, ndim=2, dtype=torch.float32, width=3)
    z = mapping.get("z")
    z = z.long() if isinstance(z, Tensor) and z.ndim == 1 else None
    if slices is None:  # PyG stores a single molecule without slices
        node_ptr = torch.tensor([0, x.shape[0]])
        edge_ptr = torch.tensor([0, edge_index.shape[1]])
        molecule_ptr = torch.tensor([0, y.shape[0]])
    else:
        if not isinstance(slices, Mapping):
            raise DatasetError(
                f"{path}: the slices are a {type(slices).__name__}, expected a dict of offset tensors"
            )
        node_ptr, edge_ptr, molecule_ptr = (
            _offsets(slices, "x", path),
            _offsets(slices, "edge_index", path),
            _offsets(slices, "y", path),
        )
        for key, expected in (("pos", node_ptr), ("edge_attr", edge_ptr)) + (
            (("z", node_ptr),) if z is not None and "z" in slices else ()
        ):
            if not torch.equal(_offsets(slices, key, path), expected):
                raise DatasetError(
                    f"{path}: slices['{key}'] disagrees with the offsets of the other per-{'node' if expected is node_ptr else 'edge'} keys"
                )
    count = node_ptr.numel() - 1
    consistent = (
        edge_ptr.numel() == count + 1
        and torch.equal(molecule_ptr, torch.arange(count + 1))
        and int(node_ptr[0]) == 0
        and int(node_ptr[-1]) == x.shape[0] == pos.shape[0]
        and int(edge_ptr[0]) == 0
        and int(edge_ptr[-1]) == edge_index.shape[1] == edge_attr.shape[0]
        and y.shape[0] == count
        and bool((node_ptr.diff() >= 0).all())
        and bool((edge_ptr.diff() >= 0).all())
        and (z is None or z.shape[0] == x.shape[0])
    )
    if not consistent:
        raise DatasetError(
            f"{path}: the offsets in slices do not match the tensors (x {tuple(x.shape)}, edge_index {tuple(edge_index.shape)}, y {tuple(y.shape)})"
        )
    if edge_index.numel():
        edge_graph = torch.repeat_interleave(torch.arange(count), edge_ptr.diff())
        if bool(((edge_index < 0) | (edge_index >= node_ptr.diff()[edge_graph])).any()):
            raise DatasetError(
                f"{path}: edge_index holds node indices outside their molecule (expected PyG's per-molecule indices)"
            )
    return QM9Molecules(
        x=x,
        edge_index=edge_index,
        edge_attr=edge_attr,
        y=y,
        pos=pos,
        z=z,
        node_ptr=node_ptr,
        edge_ptr=edge_ptr,
        source=path,
    )


def _from_graph_list(items: Sequence[Any], path: Path) -> QM9Molecules:
    """Collate PyG's raw list of per-molecule dicts (the RDKit-free download) like PyG does."""
    if not items:
        raise DatasetError(f"{path} holds no molecules")
    graphs = [_attributes(item, path) for item in items]
    keys = (
        [*_REQUIRED, "z"]
        if all(isinstance(g.get("z"), Tensor) for g in graphs)
        else list(_REQUIRED)
    )
    for index, graph in enumerate(graphs):
        for key in keys:
            if not isinstance(graph.get(key), Tensor):
                raise DatasetError(f"{path}: molecule {index} has no tensor '{key}'")
    merged = {
        key: torch.cat([g[key] for g in graphs], dim=1 if key == "edge_index" else 0)
        for key in keys
    }
    node_counts = torch.tensor([g["x"].shape[0] for g in graphs])
    edge_counts = torch.tensor([g["edge_index"].shape[1] for g in graphs])
    zero = torch.zeros(1, dtype=torch.long)
    node_ptr, edge_ptr = (
        torch.cat([zero, node_counts.cumsum(0)]),
        torch.cat([zero, edge_counts.cumsum(0)]),
    )
    slices = {
        "x": node_ptr,
        "pos": node_ptr,
        "edge_index": edge_ptr,
        "edge_attr": edge_ptr,
        "y": torch.arange(len(graphs) + 1),
    }
    return _from_collated(merged, slices, path)


def read_qm9_file(path: str | Path, /) -> QM9Molecules:
    """Read a PyG QM9 file (processed `(dict, slices, Data)`, the older `(Data, slices)`, or the raw
    list of per-molecule dicts) with the restricted unpickler; bad files raise `DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist (or is not a file)")
    try:
        content = torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
        )
    except Exception as error:  # torch.load raises many kinds for a damaged file
        raise DatasetError(
            f"{path} is not a readable PyTorch Geometric QM9 file ({type(error).__name__}: {error}); re-create it with torch_geometric.datasets.QM9 or remove it"
        ) from error
    if isinstance(content, tuple) and len(content) in (2, 3):
        if len(content) == 3:
            data_class = content[2]
            if not (isinstance(data_class, type) and data_class.__qualname__ == "Data"):
                raise DatasetError(
                    f"{path}: the saved data class is {getattr(data_class, '__qualname__', data_class)!r}, expected torch_geometric's Data"
                )
        return _from_collated(_attributes(content[0], path), content[1], path)
    if isinstance(content, list):
        return _from_graph_list(content, path)
    raise DatasetError(
        f"{path} holds a {type(content).__name__}; expected PyG's (data, slices, Data) tuple or a list of molecules"
    )


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, modified_ns: int, size: int) -> QM9Molecules:
    logger.info("reading QM9 from %s", path)
    return read_qm9_file(path)


def load_qm9(root: str | Path | None, /) -> QM9Molecules:
    """The molecules of the QM9 dataset under `root` (PyG's dataset root): the processed file,
    else the raw pre-processed download (see the module). Reads are cached per file version."""
    if root is None:
        raise DatasetError(
            "QM9 has no embedded default and nothing is downloaded: pass the PyTorch Geometric QM9 root folder (the one that holds processed/data_v3.pt)"
        )
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"the QM9 folder {root} does not exist; {_expected(root)}")
    for candidate in (root / PROCESSED_FILE, root / RAW_FILE):
        if candidate.is_file():
            stat = candidate.stat()
            return _read_cached(str(candidate.resolve()), stat.st_mtime_ns, stat.st_size)
    raise DatasetError(f"no QM9 file in {root}: {_expected(root)}")


# --------------------------------------------------------------------------- splits


def split_indices(
    count: int, /, *, seed: int, test_size: int = TEST_SIZE, val_size: int = VAL_SIZE
) -> dict[str, Tensor]:
    """A seeded shuffle of `range(count)`: test the first `test_size`, validation the next
    `val_size`, train the rest (spec §6.4)."""
    if test_size < 0 or val_size < 0 or test_size + val_size >= count:
        raise DatasetError(
            f"QM9 with {count} molecules cannot give {test_size} test and {val_size} validation molecules and a non-empty training split"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return {
        "test": order[:test_size],
        "val": order[test_size : test_size + val_size],
        "train": order[test_size + val_size :],
    }


def target_statistics(targets: Tensor, /) -> tuple[Tensor, Tensor]:
    """Column mean and unbiased std (as `Tensor.std` in the reference) of `targets` [M, T]."""
    mean, std = targets.mean(dim=0), targets.std(dim=0)
    if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
        raise DatasetError(
            f"a QM9 target has zero or non-finite spread over the statistics split (std {std.tolist()}); it cannot be standardised"
        )
    return mean, std


class QM9Split(Dataset):
    """One split of QM9: item i is `(MoleculeGraph, {task: standardised target (0-d)})`."""

    def __init__(
        self,
        molecules: QM9Molecules,
        indices: Tensor,
        /,
        *,
        task_names: Sequence[str],
        mean: Tensor,
        std: Tensor,
        target_columns: Sequence[int] = TARGET_COLUMNS,
    ) -> None:
        if len(task_names) != len(target_columns):
            raise MTLInputError(
                f"{len(task_names)} task names for {len(target_columns)} target columns"
            )
        self.molecules = molecules
        self.indices = indices.tolist()
        self.task_names = tuple(task_names)
        self.targets = (molecules.y[indices][:, list(target_columns)] - mean) / std

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[MoleculeGraph, dict[str, Tensor]]:
        return self.molecules.graph(self.indices[index]), dict(
            zip(self.task_names, self.targets[index].unbind())
        )


@dataclass(frozen=True)
class QM9Splits:
    """The three splits and the statistics their targets were standardised with."""

    train: QM9Split
    val: QM9Split
    test: QM9Split
    mean: Tensor
    std: Tensor

    def __getitem__(self, split: str) -> QM9Split:
        if split not in ("train", "val", "test"):
            raise MTLInputError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, split)


def qm9_splits(
    molecules: QM9Molecules,
    /,
    *,
    task_names: Sequence[str],
    seed: int,
    test_size: int = TEST_SIZE,
    val_size: int = VAL_SIZE,
    normalisation: Literal["train", "all"] = "train",
    target_columns: Sequence[int] = TARGET_COLUMNS,
) -> QM9Splits:
    """Split `molecules` (see `split_indices`) and standardise the targets with the training
    split's statistics (`normalisation="all"`: every molecule's, as the reference code does)."""
    if normalisation not in ("train", "all"):
        raise MTLInputError(f"normalisation must be 'train' or 'all', got {normalisation!r}")
    parts = split_indices(len(molecules), seed=seed, test_size=test_size, val_size=val_size)
    columns = list(target_columns)
    basis = (
        molecules.y[:, columns]
        if normalisation == "all"
        else molecules.y[parts["train"]][:, columns]
    )
    mean, std = target_statistics(basis)
    made = {
        name: QM9Split(
            molecules, idx, task_names=task_names, mean=mean, std=std, target_columns=columns
        )
        for name, idx in parts.items()
    }
    return QM9Splits(train=made["train"], val=made["val"], test=made["test"], mean=mean, std=std)


# --------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class MoleculeBatch:
    """A batch of complete molecular graphs: `x` [N, 11], `edge_index` [2, E] (batch-global),
    `edge_attr` [E, 5] (bond one-hot + distance), `batch` [N] (molecule of each atom)."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    num_graphs: int

    def to(self, device: torch.device | str) -> MoleculeBatch:
        return MoleculeBatch(
            self.x.to(device),
            self.edge_index.to(device),
            self.edge_attr.to(device),
            self.batch.to(device),
            self.num_graphs,
        )

    @property
    def num_samples(self) -> int:
        """The molecules in the batch (what data-parallel training splits)."""
        return self.num_graphs

    def slice_samples(self, start: int, stop: int, /) -> MoleculeBatch:
        """Molecules `start` to `stop - 1` as a batch of their own, renumbered from 0: equal to
        batching those molecules directly (molecules are laid out consecutively and every edge stays
        inside its molecule)."""
        if not 0 <= start < stop <= self.num_graphs:
            raise MTLInputError(
                f"cannot take molecules {start}..{stop - 1} of a batch of {self.num_graphs}"
            )
        offsets = torch.searchsorted(
            self.batch, torch.tensor([start, stop], device=self.batch.device)
        )
        first, last = int(offsets[0]), int(offsets[1])
        edges = (self.edge_index[0] >= first) & (self.edge_index[0] < last)
        return MoleculeBatch(
            self.x[first:last],
            self.edge_index[:, edges] - first,
            self.edge_attr[edges],
            self.batch[first:last] - start,
            stop - start,
        )


def complete_graph_with_distances(
    pos: Tensor, node_counts: Tensor, bond_index: Tensor, bond_attr: Tensor
) -> tuple[Tensor, Tensor]:
    """Every ordered atom pair (i, j), i != j, of every molecule, row-major per molecule, with the
    bond one-hot (zeros where unbonded) and |pos_j - pos_i| appended: the reference's
    `Complete()` then `T.Distance(norm=False)`, for a whole batch at once.

    `pos` [N, 3]; `node_counts` [B] (molecules laid out consecutively); `bond_index` [2, E_b]
    (batch-global); `bond_attr` [E_b, 4]. Returns `edge_index` [2, E], `edge_attr` [E, 5].
    """
    device = pos.device
    counts = node_counts.to(device=device, dtype=torch.long)
    graphs = torch.arange(counts.numel(), device=device)
    node_offsets = counts.cumsum(0) - counts
    pair_counts = counts * counts
    pair_offsets = pair_counts.cumsum(0) - pair_counts
    pair_graph = torch.repeat_interleave(graphs, pair_counts)
    local = torch.arange(int(pair_counts.sum()), device=device) - pair_offsets[pair_graph]
    size = counts[pair_graph]
    row_local = torch.div(local, size, rounding_mode="floor")
    col_local = local - row_local * size
    row, col = row_local + node_offsets[pair_graph], col_local + node_offsets[pair_graph]
    dense = bond_attr.new_zeros(local.numel(), bond_attr.shape[1])
    if bond_index.numel():
        atom_graph = torch.repeat_interleave(graphs, counts)
        bond_graph = atom_graph[bond_index[0]]
        start = node_offsets[bond_graph]
        dense[
            pair_offsets[bond_graph]
            + (bond_index[0] - start) * counts[bond_graph]
            + (bond_index[1] - start)
        ] = bond_attr
    keep = row != col
    row, col = row[keep], col[keep]
    distance = torch.linalg.vector_norm(pos[col] - pos[row], dim=-1, keepdim=True)
    return torch.stack([row, col]), torch.cat([dense[keep], distance.to(bond_attr.dtype)], dim=-1)


def batch_molecules(graphs: Sequence[MoleculeGraph], /) -> MoleculeBatch:
    """Concatenate molecules into one `MoleculeBatch` of complete graphs (see the module)."""
    if not graphs:
        raise MTLInputError("cannot batch zero molecules")
    node_counts = torch.tensor([g.num_nodes for g in graphs])
    bond_counts = torch.tensor([g.edge_index.shape[1] for g in graphs])
    node_offsets = node_counts.cumsum(0) - node_counts
    bond_index = torch.cat([g.edge_index for g in graphs], dim=1) + torch.repeat_interleave(
        node_offsets, bond_counts
    )
    bond_attr = torch.cat([g.edge_attr for g in graphs])
    pos = torch.cat([g.pos for g in graphs])
    edge_index, edge_attr = complete_graph_with_distances(pos, node_counts, bond_index, bond_attr)
    batch = torch.repeat_interleave(torch.arange(len(graphs)), node_counts)
    return MoleculeBatch(
        torch.cat([g.x for g in graphs]), edge_index, edge_attr, batch, len(graphs)
    )


def collate(
    items: Sequence[tuple[MoleculeGraph, Mapping[str, Tensor]]], /
) -> tuple[MoleculeBatch, dict[str, Tensor]]:
    """Batch `(molecule, {task: target})` items into `(MoleculeBatch, {task: [B]})`."""
    if not items:
        raise MTLInputError("cannot collate an empty batch")
    batch = batch_molecules([graph for graph, _ in items])
    names = list(items[0][1])
    return batch, {name: torch.stack([targets[name] for _, targets in items]) for name in names}


# --------------------------------------------------------------------------- fixture

_ATOMIC_NUMBERS = (1, 6, 7, 8, 9)  # H, C, N, O, F: the one-hot order of QM9.process
_TARGET_SCALE = torch.tensor(
    [
        1.5,
        8.0,
        0.6,
        1.3,
        1.2,
        280.0,
        0.9,
        400.0,
        400.0,
        400.0,
        400.0,
        4.0,
        10.0,
        10.0,
        10.0,
        9.0,
        5.0,
        1.5,
        1.2,
    ]
)
_TARGET_OFFSET = torch.tensor(
    [
        2.7,
        75.0,
        -6.5,
        0.3,
        6.8,
        1190.0,
        4.0,
        -11000.0,
        -11000.0,
        -11000.0,
        -11000.0,
        31.0,
        -76.0,
        -77.0,
        -78.0,
        -70.0,
        3.0,
        1.4,
        1.1,
    ]
)


def _synthetic_molecule(index: int, generator: torch.Generator) -> dict[str, Any]:
    atoms = int(torch.randint(3, 10, (1,), generator=generator))
    types_ = torch.randint(0, 5, (atoms,), generator=generator)
    z = torch.tensor(_ATOMIC_NUMBERS)[types_]
    parents = [int(torch.randint(0, k, (1,), generator=generator)) for k in range(1, atoms)]
    bond_types = torch.randint(0, BOND_FEATURES, (atoms - 1,), generator=generator).tolist()
    rows, cols, kinds = [], [], []
    for child, (parent, kind) in enumerate(zip(parents, bond_types), start=1):
        rows += [parent, child]
        cols += [child, parent]
        kinds += [kind, kind]
    edge_index = torch.tensor([rows, cols], dtype=torch.long)
    order = (edge_index[0] * atoms + edge_index[1]).argsort()  # PyG sorts bonds by (row, col)
    edge_index = edge_index[:, order]
    edge_attr = torch.nn.functional.one_hot(torch.tensor(kinds)[order], BOND_FEATURES).float()
    hydrogens = (z == 1).float()
    num_hs = torch.zeros(atoms).index_add_(0, edge_index[1], hydrogens[edge_index[0]])
    aromatic = torch.zeros(atoms).index_fill_(0, edge_index[0][edge_attr[:, 3] > 0], 1.0)
    hybridisation = torch.nn.functional.one_hot(
        torch.randint(0, 3, (atoms,), generator=generator), 3
    ).float()
    x = torch.cat(
        [
            torch.nn.functional.one_hot(types_, 5).float(),
            z.float()[:, None],
            aromatic[:, None],
            hybridisation,
            num_hs[:, None],
        ],
        dim=1,
    )
    y = (_TARGET_OFFSET + _TARGET_SCALE * torch.randn(NUM_TARGETS, generator=generator))[None]
    pos = 1.5 * torch.randn(atoms, 3, generator=generator)
    symbols = "".join("HCNOF"[t] for t in types_.tolist())
    # the key order of Data(x=..., z=..., pos=..., ...).to_dict() in QM9.process
    return {
        "x": x,
        "edge_index": edge_index,
        "edge_attr": edge_attr,
        "y": y,
        "pos": pos,
        "z": z,
        "smiles": symbols,
        "name": f"gdb_{index + 1}",
        "idx": index,
    }


def write_fixture(root: str | Path, /, *, count: int, seed: int) -> Path:
    """Write `count` synthetic molecules under `root` in PyG's QM9 layout: `processed/data_v3.pt`
    (as `InMemoryDataset.save` writes it), `processed/pre_transform.pt` and `pre_filter.pt`
    (`'None'`, as PyG records no transform), and `raw/qm9_v3.pt` (the list of per-molecule dicts
    of the RDKit-free download, so that `torch_geometric.datasets.QM9(root)` finds its raw file
    and downloads nothing). torch_geometric is not imported. Returns the processed file."""
    if count < 1:
        raise MTLInputError(f"a QM9 fixture needs at least one molecule, got count={count}")
    root = Path(root)
    generator = torch.Generator().manual_seed(seed)
    molecules = [_synthetic_molecule(i, generator) for i in range(count)]
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "processed").mkdir(parents=True, exist_ok=True)
    torch.save(molecules, root / RAW_FILE)
    if count == 1:  # InMemoryDataset.collate returns (data_list[0], None) for one molecule
        data: dict[str, Any] = dict(molecules[0])
        slices = None
    else:
        data, slices = {}, {}
        for key in molecules[0]:
            values = [m[key] for m in molecules]
            if key in ("smiles", "name"):
                data[key], sizes = values, [1] * count
            elif key == "idx":
                data[key], sizes = torch.tensor(values, dtype=torch.long), [1] * count
            else:
                dim = 1 if key == "edge_index" else 0
                data[key], sizes = torch.cat(values, dim=dim), [v.shape[dim] for v in values]
            slices[key] = torch.cat(
                [torch.zeros(1, dtype=torch.long), torch.tensor(sizes).cumsum(0)]
            )
    path = root / PROCESSED_FILE
    torch.save((data, slices, _stand_in(*_DATA_REFERENCE)), path, pickle_module=_reference_pickle)
    for name in ("pre_transform.pt", "pre_filter.pt"):
        torch.save("None", root / "processed" / name)
    return path
