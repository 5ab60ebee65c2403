"""QM9 from the installable package `qm9pack` (issue 19), converted once to the in-memory layout
of PyTorch Geometric's QM9 (`benchmarks.data.qm9.QM9Molecules`) and cached.

**The source.** `qm9pack` 1.0.3 (MIT, `pip install -e .[qm9data]`, which also installs RDKit and
pandas) ships the QM9 database as CSV files inside the package: `qm9pack/data/qm9_part1.csv` ..
`qm9_part3.csv`, 130,831 molecules (133,885 minus the 3,054 that failed QM9's consistency check,
the same set PyG keeps) in ascending GDB index, one row each with the `.xyz` atom order
(`Elements`, `XYZ_Ang` in Angstrom), a SMILES and every property in atomic units. The package's
Python module imports `pkg_resources` when it is imported, so it is never imported here: the CSV
files are found through `importlib.util.find_spec("qm9pack").submodule_search_locations` and read
with the standard library's `csv` (pandas is not needed for reading).

**Targets** (`pyg_targets`): the 19 columns of PyG's `QM9` in its order and units
(`torch_geometric/datasets/qm9.py`: mu, alpha, HOMO, LUMO, gap, <R^2>, ZPVE, U0, U, H, G, c_v,
U0_atom, U_atom, H_atom, G_atom, A, B, C): Hartree -> eV with `HARTREE_TO_EV = 27.211386246`
(PyG's `HAR2EV`). PyG takes the atomisation energies from MoleculeNet's `gdb9.sdf.csv`, in
kcal/mol, and multiplies them by `KCALMOL_TO_EV = 0.04336414`; here they are recomputed from the
energies and QM9's atom reference energies (`ATOM_REFERENCE_HARTREE`, B3LYP/6-31G(2df,p), QM9's
`atomref` table) as `(E - sum of the atoms' references) * 627.509` kcal/mol, which reproduces
the published values of gdb_1 to 1e-9 kcal/mol, then converted like PyG. The suite uses the 11
columns `benchmarks.data.qm9.TARGET_COLUMNS`. Values are computed in float64 and stored as
float32 (PyG rounds to float32 before its conversion: the two differ by at most an ulp).

**Bonds** (`rdkit_bonds`, the one RDKit-dependent function, imported lazily): the connectivity
from the coordinates (`rdDetermineBonds.DetermineConnectivity` with van der Waals radii,
`useVdw=True, covFactor=1.1`); where that graph is not the SMILES graph (canonical SMILES of both
heavy-atom-and-hydrogen skeletons with every bond single and no charges), the extended-Hueckel
connectivity (`useHueckel=True`, charge 0); then the bond orders of the accepted graph
(`DetermineBondOrders`, charge 0, charged fragments allowed, Kekule form). A molecule for which
neither graph is the SMILES graph, or whose bond orders cannot be determined, keeps the van der
Waals connectivity with every bond single and is counted as failed (3 of 130,831, see
docs/DECISIONS.md). Bonds are stored in both directions, sorted by `(row, col)` as PyG sorts them.

**Feature layouts.** Node features as PyG's `QM9.process`: one-hot H, C, N, O, F, atomic number,
aromatic, sp, sp2, sp3, number of bonded hydrogens (11); bond one-hot single, double, triple,
aromatic (4); the suite's `collate` then builds the complete graph with distances.
`layout="pyg"` (the default) reproduces PyG: it reads `gdb9.sdf` without sanitising, so aromatic,
sp, sp2 and sp3 are all zero and the bonds are Kekule (no aromatic bond).
`layout="sanitised"` sanitises the molecule (RDKit's aromaticity and hybridisation) and fills the
aromatic and sp/sp2/sp3 columns and the aromatic bond column. Both come from one conversion.

**Cache.** The conversion (about 2.5 CPU-minutes for the whole set, measured in docs/DECISIONS.md;
a tqdm progress bar; `workers` processes, default every core this process may use) is written once
to `<cache_dir>/qm9pack.pt` (`qm9pack-first<N>.pt` for a `limit`), a `torch.save` of plain tensors
(read back with `weights_only=True`) with a SHA-256 checksum of its tensors and the key of its
source (the converter's version, the bond finder, qm9pack's version, the limit, the CSV files'
sizes and a hash of their first and last 64 KiB). The default `cache_dir` is `$XDG_CACHE_HOME/mtl-bargaining/qm9pack`
(`~/.cache/mtl-bargaining/qm9pack`): the conversion belongs to the machine's user, not to one
sweep's results folder (`--out`, which `--fresh` runs may discard), and serves every experiment.
A cache that cannot be read, fails its checksum, or was built from other CSV files or another
converter version is rebuilt with a warning that says why; concurrent processes (`--workers`,
`--nproc`) wait on a file lock while one of them builds it, and the file is replaced atomically.
Where qm9pack is not installed, a valid cache (checksum) is used as it is (a cache copied to
another machine needs neither qm9pack nor RDKit).

`python -m benchmarks.data.qm9pack [--cache-dir DIR] [--limit N] [--workers W] [--rebuild]`
converts ahead of time and prints the conversion's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from benchmarks.data.errors import DatasetError
from benchmarks.data.qm9 import BOND_FEATURES, QM9Molecules
from core.errors import MTLInputError

try:
    import fcntl
except (
    ImportError
):  # no OS file locks (Windows): one converting process at a time is the user's care
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

QM9PACK_VERSION = "1.0.3"
INSTALL_HINT = "pip install -e .[qm9data]"
"""The optional extra that installs qm9pack==1.0.3, rdkit and pandas (pyproject.toml)."""
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CONVERTER_VERSION = 1
"""Bumped whenever the conversion changes: a cache of another version is stale and rebuilt."""
CACHE_FORMAT = "mtl-bargaining/qm9pack-cache"
FeatureLayout = Literal["pyg", "sanitised"]
FEATURE_LAYOUTS: tuple[str, ...] = ("pyg", "sanitised")

HARTREE_TO_EV = 27.211386246
"""PyG's `HAR2EV` (torch_geometric/datasets/qm9.py)."""
KCALMOL_TO_EV = 0.04336414
"""PyG's `KCALMOL2EV`, applied to MoleculeNet's kcal/mol atomisation energies."""
HARTREE_TO_KCALMOL = 627.509
"""The factor of MoleculeNet's `gdb9.sdf.csv` atomisation columns (reproduces gdb_1 to 1e-9)."""
ATOM_REFERENCE_HARTREE = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
"""U0, U, H, G of the isolated atoms (Hartree; QM9's atomref table, B3LYP/6-31G(2df,p))."""
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
"""The one-hot order of PyG's node types (H, C, N, O, F)."""

ENERGY_COLUMNS = (
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
)
"""U0, U, H, G in Hartree (qm9pack spells enthalpy `Enthalphy`)."""
_TARGET_SOURCES: tuple[tuple[str, float], ...] = (
    ("Dipole_debye", 1.0),
    ("Polarizability_bohr3", 1.0),
    ("HOMO_au", HARTREE_TO_EV),
    ("LUMO_au", HARTREE_TO_EV),
    ("HOMO_LUMO_gap_au", HARTREE_TO_EV),
    ("R2_bohr2", 1.0),
    ("ZPVE_au", HARTREE_TO_EV),
    *((column, HARTREE_TO_EV) for column in ENERGY_COLUMNS),
    ("Heatcapacity_Cv_cal_mol_K", 1.0),
)
"""PyG's targets 0-11 from qm9pack's columns, with their factor to PyG's units."""
ROTATION_COLUMNS = ("RotA_GHz", "RotB_GHz", "RotC_GHz")
"""PyG's targets 16-18 (GHz)."""
REQUIRED_COLUMNS = (
    "Index",
    "SMILES",
    "Elements",
    "XYZ_Ang",
    *(c for c, _ in _TARGET_SOURCES),
    *ROTATION_COLUMNS,
)

BOND_TYPES = ("single", "double", "triple", "aromatic")
"""The bond one-hot order (PyG's `bonds`); stored as indices 0-3."""
HYBRIDISATIONS = ("other", "sp", "sp2", "sp3")
"""Stored hybridisation codes 0-3; the node features have columns for sp, sp2, sp3."""
METHODS = ("vdw", "hueckel", "failed", "unchecked")
"""How a molecule's bonds were found: van der Waals connectivity agreeing with the SMILES graph,
the Hueckel fallback, neither (single bonds), or not checked (the SMILES does not parse)."""

_HASH_SPAN = 64 * 1024
_TENSOR_KEYS = (
    "index",
    "y",
    "z",
    "pos",
    "node_ptr",
    "edge_local",
    "edge_ptr",
    "bond_kekule",
    "bond_sanitised",
    "aromatic",
    "hybridisation",
)


# --------------------------------------------------------------------------- locating the CSV files


def qm9pack_data_dir() -> Path:
    """The `data` folder of the installed qm9pack, found without importing the package (its
    module imports `pkg_resources`); raises `DatasetError` naming the extra to install."""
    spec = importlib.util.find_spec("qm9pack")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise DatasetError(
            f"QM9 from qm9pack needs the optional extra: {INSTALL_HINT} (installs qm9pack=={QM9PACK_VERSION}, rdkit and pandas); or use PyG's QM9 with --data-root"
        )
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / name).is_file() for name in CSV_FILES):
            return folder
    raise DatasetError(
        f"the installed qm9pack ({', '.join(locations)}) has no data/{'/'.join(CSV_FILES)}: reinstall it with {INSTALL_HINT}"
    )


def installed_version() -> str | None:
    """qm9pack's installed version (from its metadata, without importing it), or None."""
    try:
        return importlib.metadata.version("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        return None


def csv_paths(csv_dir: str | Path | None = None, /) -> list[Path]:
    """The CSV files in `csv_dir` (default: the installed qm9pack's), in order."""
    folder = qm9pack_data_dir() if csv_dir is None else Path(csv_dir)
    missing = [name for name in CSV_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{folder} lacks {', '.join(missing)}: expected qm9pack's {', '.join(CSV_FILES)}"
        )
    return [folder / name for name in CSV_FILES]


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/mtl-bargaining/qm9pack`, else `~/.cache/mtl-bargaining/qm9pack`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtl-bargaining" / "qm9pack"


def cache_path(cache_dir: str | Path | None = None, /, *, limit: int | None = None) -> Path:
    """The cache file of the whole set (`qm9pack.pt`) or of its first `limit` molecules."""
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return folder / ("qm9pack.pt" if limit is None else f"qm9pack-first{limit}.pt")


# --------------------------------------------------------------------------- reading the CSV rows


@dataclass(frozen=True)
class RawMolecule:
    """One CSV row: GDB `index`, `smiles`, element symbols in `.xyz` order, flat positions
    (Angstrom, 3 per atom) and the 19 targets in PyG's order and units."""

    index: int
    smiles: str
    elements: str
    positions: tuple[float, ...]
    y: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"gdb_{self.index}"


def atomisation_energies_kcal(
    elements: Sequence[str], energies_hartree: Sequence[float], /
) -> list[float]:
    """U0_atom, U_atom, H_atom, G_atom in kcal/mol: `(E - sum of the atoms' references) * 627.509`
    for the energies U0, U, H, G (Hartree), as MoleculeNet's `gdb9.sdf.csv` has them."""
    totals = [0.0, 0.0, 0.0, 0.0]
    for element in elements:
        for k, reference in enumerate(ATOM_REFERENCE_HARTREE[element]):
            totals[k] += reference
    return [
        (energy - total) * HARTREE_TO_KCALMOL for energy, total in zip(energies_hartree, totals)
    ]


def pyg_targets(row: dict[str, str], elements: Sequence[str], /) -> list[float]:
    """The 19 targets of PyG's QM9 from one qm9pack row (see the module)."""
    values = [float(row[column]) * factor for column, factor in _TARGET_SOURCES]
    atomisation = atomisation_energies_kcal(
        elements, [float(row[column]) for column in ENERGY_COLUMNS]
    )
    return (
        values
        + [value * KCALMOL_TO_EV for value in atomisation]
        + [float(row[column]) for column in ROTATION_COLUMNS]
    )


_ELEMENT = re.compile(r"[A-Za-z]+")


def _parse_row(row: dict[str, str], path: Path, line: int) -> RawMolecule:
    try:
        elements = _ELEMENT.findall(row["Elements"])
        positions = tuple(
            float(v) for v in row["XYZ_Ang"].replace("[", " ").replace("]", " ").split(",")
        )
        if not elements or len(positions) != 3 * len(elements):
            raise ValueError(f"{len(elements)} elements but {len(positions)} coordinates")
        unknown = sorted(set(elements) - set(ATOMIC_NUMBERS))
        if unknown:
            raise ValueError(f"elements {unknown} are not QM9's H, C, N, O, F")
        y = pyg_targets(row, elements)
        return RawMolecule(int(row["Index"]), row["SMILES"], "".join(elements), positions, tuple(y))
    except (ValueError, TypeError, KeyError) as error:
        raise DatasetError(
            f"{path} line {line}: not a qm9pack QM9 row ({error}); reinstall qm9pack ({INSTALL_HINT})"
        ) from error


def read_rows(paths: Sequence[Path], /, *, limit: int | None = None) -> list[RawMolecule]:
    """The molecules of qm9pack's CSV files, in file order (ascending GDB index), at most `limit`."""
    if limit is not None and limit < 1:
        raise MTLInputError(f"limit must be a positive number of molecules, got {limit}")
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    molecules: list[RawMolecule] = []
    for path in paths:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [
                column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or ())
            ]
            if missing:
                raise DatasetError(
                    f"{path} lacks the columns {', '.join(missing)}: not one of qm9pack {QM9PACK_VERSION}'s CSV files"
                )
            for row in reader:
                molecules.append(_parse_row(row, path, reader.line_num))
                if limit is not None and len(molecules) >= limit:
                    return molecules
    if not molecules:
        raise DatasetError(f"{', '.join(map(str, paths))} hold no molecules")
    return molecules


# --------------------------------------------------------------------------- bonds (RDKit, lazily)


@dataclass(frozen=True)
class MoleculeBonds:
    """The bonds of one molecule: `bonds` as `(i, j, kekule type, sanitised type)` with i < j and
    types indexing `BOND_TYPES`; per-atom `aromatic` (0/1) and `hybridisation` (`HYBRIDISATIONS`
    codes) of the sanitised molecule; `method` one of `METHODS`; `note` any remark (sanitisation
    failed, the bond orders differ from the SMILES's)."""

    method: str
    bonds: tuple[tuple[int, int, int, int], ...]
    aromatic: tuple[int, ...]
    hybridisation: tuple[int, ...]
    note: str = ""


BondFinder = Callable[[str, Sequence[float], str], MoleculeBonds]
"""`(elements, flat positions, smiles) -> MoleculeBonds`; `rdkit_bonds` is the real one."""


@functools.cache
def _rdkit() -> Any:
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdDetermineBonds
        from rdkit.Geometry import Point3D
    except ImportError as error:
        raise DatasetError(f"converting QM9 from qm9pack needs RDKit: {INSTALL_HINT}") from error
    RDLogger.DisableLog("rdApp.*")
    return Chem, rdDetermineBonds, Point3D


def _skeleton(mol: Any) -> str:
    """Canonical SMILES of `mol`'s graph alone: every bond single, no charges, no aromaticity."""
    Chem = _rdkit()[0]
    skeleton = Chem.RWMol(mol)
    for atom in skeleton.GetAtoms():
        atom.SetFormalCharge(0)
        atom.SetNoImplicit(True)
        atom.SetNumExplicitHs(0)
        atom.SetIsAromatic(False)
        atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    for bond in skeleton.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
        bond.SetStereo(Chem.BondStereo.STEREONONE)
    skeleton.UpdatePropertyCache(strict=False)
    return Chem.MolToSmiles(skeleton, isomericSmiles=False)


@contextlib.contextmanager
def _silenced_stderr() -> Iterator[None]:
    """Hide what C code writes to file descriptor 2 (the Hueckel code prints "!!! Warning !!!
    Distance between atoms ... is suspicious" for short O-H and N-H bonds, amid the progress bar)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _connectivity(atoms: Any, *, hueckel: bool) -> Any:
    Chem, determine, _ = _rdkit()
    mol = Chem.Mol(atoms)
    if hueckel:
        with _silenced_stderr():
            determine.DetermineConnectivity(mol, useHueckel=True, charge=0)
    else:
        determine.DetermineConnectivity(mol, useHueckel=False, charge=0, covFactor=1.1, useVdw=True)
    return mol


def rdkit_bonds(elements: str, positions: Sequence[float], smiles: str, /) -> MoleculeBonds:
    """The bonds of one molecule from its coordinates, checked against its SMILES (module)."""
    Chem, determine, Point3D = _rdkit()
    atoms = Chem.RWMol()
    conformer = Chem.Conformer(len(elements))
    for k, symbol in enumerate(elements):
        atoms.AddAtom(Chem.Atom(symbol))
        conformer.SetAtomPosition(
            k, Point3D(positions[3 * k], positions[3 * k + 1], positions[3 * k + 2])
        )
    atoms.AddConformer(conformer, assignId=True)
    atoms = atoms.GetMol()
    reference = Chem.MolFromSmiles(smiles)
    vdw = _connectivity(atoms, hueckel=False)
    if reference is None:
        method, mol = "unchecked", vdw
    else:
        target = _skeleton(Chem.AddHs(reference))
        method, mol = "vdw", vdw
        if _skeleton(vdw) != target:
            method, mol = "hueckel", _connectivity(atoms, hueckel=True)
            if _skeleton(mol) != target:
                method, mol = "failed", vdw
    singles = tuple(
        sorted(
            (
                min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                0,
                0,
            )
            for b in vdw.GetBonds()
        )
    )
    zeros = (0,) * len(elements)
    if method == "failed":
        return MoleculeBonds(
            "failed", singles, zeros, zeros, "no coordinate graph is the SMILES graph"
        )
    try:
        determine.DetermineBondOrders(mol, charge=0, allowChargedFragments=True, embedChiral=False)
    except Exception as error:  # RDKit raises several kinds when no bond orders fit
        return MoleculeBonds(
            "failed", singles, zeros, zeros, f"bond orders: {type(error).__name__}"
        )
    codes = {
        Chem.BondType.SINGLE: 0,
        Chem.BondType.DOUBLE: 1,
        Chem.BondType.TRIPLE: 2,
        Chem.BondType.AROMATIC: 3,
    }
    kekule = {
        (
            min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
            max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
        ): codes.get(b.GetBondType(), 0)
        for b in mol.GetBonds()
    }
    note = ""
    sanitised = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(sanitised)
    except Exception as error:  # keep the Kekule bonds; no aromatic or hybridisation flags
        return MoleculeBonds(
            method,
            tuple((i, j, t, t) for (i, j), t in sorted(kekule.items())),
            zeros,
            zeros,
            f"sanitisation: {type(error).__name__}",
        )
    if reference is not None and Chem.MolToSmiles(
        Chem.RemoveHs(sanitised), isomericSmiles=False
    ) != Chem.MolToSmiles(reference, isomericSmiles=False):
        note = "bond orders or charges differ from the SMILES"
    hybrid = {
        Chem.HybridizationType.SP: 1,
        Chem.HybridizationType.SP2: 2,
        Chem.HybridizationType.SP3: 3,
    }
    bonds = []
    for bond in sanitised.GetBonds():
        i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        bonds.append((i, j, kekule[(i, j)], codes.get(bond.GetBondType(), 0)))
    aromatic = tuple(int(atom.GetIsAromatic()) for atom in sanitised.GetAtoms())
    hybridisation = tuple(hybrid.get(atom.GetHybridization(), 0) for atom in sanitised.GetAtoms())
    return MoleculeBonds(method, tuple(sorted(bonds)), aromatic, hybridisation, note)


def _bonds_of(task: tuple[BondFinder, str, tuple[float, ...], str]) -> MoleculeBonds:
    finder, elements, positions, smiles = task
    return finder(elements, positions, smiles)


def find_bonds(
    molecules: Sequence[RawMolecule],
    /,
    *,
    finder: BondFinder = rdkit_bonds,
    workers: int | None = None,
    progress: bool = True,
) -> list[MoleculeBonds]:
    """`finder` on every molecule, over `workers` processes (default: every core this process may
    use; 1 runs here), in order, with a tqdm progress bar."""
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MTLInputError(f"workers must be at least 1, got {workers}")
    tasks = ((finder, m.elements, m.positions, m.smiles) for m in molecules)
    bar = functools.partial(
        tqdm,
        total=len(molecules),
        desc="QM9 from qm9pack: bonds (RDKit)",
        unit="mol",
        disable=not progress,
        mininterval=1.0,
    )
    if workers == 1 or len(molecules) < 2 * workers:
        return [_bonds_of(task) for task in bar(tasks)]
    context = multiprocessing.get_context(
        "spawn"
    )  # no fork of a process that holds torch's threads
    with context.Pool(workers) as pool:
        return list(bar(pool.imap(_bonds_of, tasks, chunksize=256)))


def default_workers() -> int:
    """The cores this process may use."""
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


# --------------------------------------------------------------------------- compact tensors


def _pack(molecules: Sequence[RawMolecule], bonds: Sequence[MoleculeBonds]) -> dict[str, Tensor]:
    """The compact tensors of the cache (per-molecule local edge indices, sorted as PyG sorts)."""
    z, pos, aromatic, hybridisation, node_counts = [], [], [], [], []
    rows, cols, kekule, sanitised, edge_counts = [], [], [], [], []
    for molecule, found in zip(molecules, bonds):
        n = len(molecule.elements)
        if len(found.aromatic) != n or len(found.hybridisation) != n:
            raise DatasetError(
                f"{molecule.name}: the bond finder returned flags for {len(found.aromatic)} atoms, the molecule has {n}"
            )
        z += [ATOMIC_NUMBERS[symbol] for symbol in molecule.elements]
        pos += molecule.positions
        aromatic += found.aromatic
        hybridisation += found.hybridisation
        node_counts.append(n)
        directed = sorted(
            [(i, j, k, s) for i, j, k, s in found.bonds]
            + [(j, i, k, s) for i, j, k, s in found.bonds]
        )
        for i, j, k, s in directed:
            if not (
                0 <= i < n
                and 0 <= j < n
                and i != j
                and 0 <= k < BOND_FEATURES
                and 0 <= s < BOND_FEATURES
            ):
                raise DatasetError(
                    f"{molecule.name}: bond ({i}, {j}, types {k}, {s}) is not a bond of its {n} atoms"
                )
            rows.append(i)
            cols.append(j)
            kekule.append(k)
            sanitised.append(s)
        edge_counts.append(len(directed))
    zero = torch.zeros(1, dtype=torch.long)
    return {
        "index": torch.tensor([m.index for m in molecules], dtype=torch.int64),
        "y": torch.tensor([m.y for m in molecules], dtype=torch.float64).to(torch.float32),
        "z": torch.tensor(z, dtype=torch.int8),
        "pos": torch.tensor(pos, dtype=torch.float64).to(torch.float32).reshape(-1, 3),
        "node_ptr": torch.cat([zero, torch.tensor(node_counts, dtype=torch.long).cumsum(0)]),
        "edge_local": torch.tensor([rows, cols], dtype=torch.int8).reshape(2, -1),
        "edge_ptr": torch.cat([zero, torch.tensor(edge_counts, dtype=torch.long).cumsum(0)]),
        "bond_kekule": torch.tensor(kekule, dtype=torch.int8),
        "bond_sanitised": torch.tensor(sanitised, dtype=torch.int8),
        "aromatic": torch.tensor(aromatic, dtype=torch.int8),
        "hybridisation": torch.tensor(hybridisation, dtype=torch.int8),
    }


def checksum(tensors: dict[str, Tensor], /) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in `_TENSOR_KEYS` order."""
    digest = hashlib.sha256()
    for key in _TENSOR_KEYS:
        tensor = tensors[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def molecules_from_tensors(
    tensors: dict[str, Tensor], /, *, layout: FeatureLayout = "pyg", source: Path
) -> QM9Molecules:
    """PyG's collated layout (`QM9Molecules`) of the cache's tensors, in feature `layout`."""
    if layout not in FEATURE_LAYOUTS:
        raise MTLInputError(f"layout must be one of {', '.join(FEATURE_LAYOUTS)}, got {layout!r}")
    z = tensors["z"].long()
    node_ptr, edge_ptr = tensors["node_ptr"].long(), tensors["edge_ptr"].long()
    edge_index = tensors["edge_local"].long()
    node_type = torch.full((10,), -1, dtype=torch.long)
    node_type[torch.tensor(list(ATOMIC_NUMBERS.values()))] = torch.arange(len(ATOMIC_NUMBERS))
    global_index = edge_index + torch.repeat_interleave(node_ptr[:-1], edge_ptr.diff())
    hydrogens = (z == 1).to(torch.float32)
    num_hs = torch.zeros(z.numel()).index_add_(0, global_index[1], hydrogens[global_index[0]])
    if layout == "sanitised":
        flags = torch.cat(
            [
                tensors["aromatic"].float()[:, None],
                torch.nn.functional.one_hot(tensors["hybridisation"].long(), len(HYBRIDISATIONS))[
                    :, 1:
                ].float(),
            ],
            dim=1,
        )
        bond_type = tensors["bond_sanitised"].long()
    else:
        flags = torch.zeros(z.numel(), 4)
        bond_type = tensors["bond_kekule"].long()
    x = torch.cat(
        [
            torch.nn.functional.one_hot(node_type[z], len(ATOMIC_NUMBERS)).float(),
            z.float()[:, None],
            flags,
            num_hs[:, None],
        ],
        dim=1,
    )
    edge_attr = torch.nn.functional.one_hot(bond_type, BOND_FEATURES).float()
    return QM9Molecules(
        x=x,
        edge_index=edge_index,
        edge_attr=edge_attr,
        y=tensors["y"].float(),
        pos=tensors["pos"].float(),
        z=z,
        node_ptr=node_ptr,
        edge_ptr=edge_ptr,
        source=source,
    )


# --------------------------------------------------------------------------- the cache


def source_key(
    paths: Sequence[Path], /, *, limit: int | None, finder: BondFinder = rdkit_bonds
) -> dict[str, Any]:
    """What a cache was built from: converter version, bond finder, qm9pack's version, limit, and
    per CSV file its name, size and a SHA-256 of its first and last 64 KiB."""
    files = []
    for path in paths:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(handle.read(_HASH_SPAN))
            handle.seek(max(0, size - _HASH_SPAN))
            digest.update(handle.read(_HASH_SPAN))
        files.append([path.name, size, digest.hexdigest()])
    return {
        "converter": CONVERTER_VERSION,
        "finder": _name_of(finder),
        "qm9pack": installed_version(),
        "limit": limit,
        "files": files,
    }


def _name_of(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def _read_cache(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The cache's content and "", or None and why it cannot be used (one read per file version)."""
    stat = path.stat()
    return _read_cache_version(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _read_cache_version(
    path: str, modified_ns: int, size: int
) -> tuple[dict[str, Any] | None, str]:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or damaged file raises many kinds
        return None, f"it cannot be read ({type(error).__name__}: {error})"
    if (
        not isinstance(content, dict)
        or content.get("format") != CACHE_FORMAT
        or not isinstance(content.get("tensors"), dict)
    ):
        return None, "it is not a qm9pack cache of this project"
    tensors = content["tensors"]
    if any(not isinstance(tensors.get(key), Tensor) for key in _TENSOR_KEYS):
        return None, "tensors are missing"
    if checksum(tensors) != content.get("checksum"):
        return None, "its checksum does not match its content (corrupt)"
    return content, ""


def _differences(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "it records no source"
    changed = [
        f"{name} {old.get(name)!r} -> {new[name]!r}" for name in new if old.get(name) != new[name]
    ]
    return "; ".join(changed) if changed else "its source differs"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_cache(
    path: Path,
    paths: Sequence[Path],
    /,
    *,
    limit: int | None = None,
    finder: BondFinder = rdkit_bonds,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the CSV files and write the cache file at `path` atomically; returns its content."""
    started = time.perf_counter()
    molecules = read_rows(paths, limit=limit)
    read_s = time.perf_counter() - started
    workers = default_workers() if workers is None else workers
    bonds = find_bonds(molecules, finder=finder, workers=workers, progress=progress)
    tensors = _pack(molecules, bonds)
    by_method = {
        method: [m.name for m, b in zip(molecules, bonds) if b.method == method]
        for method in METHODS
    }
    notes: dict[str, list[str]] = {}
    for molecule, found in zip(molecules, bonds):
        if found.note:
            notes.setdefault(found.note, []).append(molecule.name)
    stats = {
        "molecules": len(molecules),
        "atoms": int(tensors["z"].numel()),
        "bonds": int(tensors["edge_local"].shape[1]) // 2,
        **{f"{method}_molecules": len(names) for method, names in by_method.items()},
        "failed_names": by_method["failed"],
        "hueckel_names": by_method["hueckel"],
        "unchecked_names": by_method["unchecked"],
        "notes": {
            note: {"count": len(names), "first": names[:20]} for note, names in notes.items()
        },
        "workers": workers,
        "read_s": round(read_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "rdkit": _version_of("rdkit"),
    }
    content = {
        "format": CACHE_FORMAT,
        "source": source_key(paths, limit=limit, finder=finder),
        "stats": stats,
        "tensors": tensors,
        "checksum": checksum(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(content, temporary)
    os.replace(temporary, path)
    logger.info(
        "QM9 from qm9pack: %d molecules converted in %.0f s (%d Hueckel fallbacks, %d with single bonds only); cached in %s",
        stats["molecules"],
        stats["seconds"],
        stats["hueckel_molecules"],
        stats["failed_molecules"],
        path,
    )
    return content


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def prepare_cache(
    cache_dir: str | Path | None = None,
    /,
    *,
    limit: int | None = None,
    csv_dir: str | Path | None = None,
    rebuild: bool = False,
    finder: BondFinder = rdkit_bonds,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """The valid cache file of `cache_dir` for `limit` and its content: read if valid and built
    from the current CSV files, else (re)built with a warning that says why (see the module)."""
    path = cache_path(cache_dir, limit=limit)
    if path.parent.exists() and not path.parent.is_dir():
        raise DatasetError(
            f"the qm9pack cache folder {path.parent} is a file: pass a folder (or nothing, for {default_cache_dir()})"
        )
    if limit is not None and limit < 1:
        raise MTLInputError(f"limit must be a positive number of molecules, got {limit}")
    try:
        paths = csv_paths(csv_dir)
    except DatasetError:
        if (
            csv_dir is None and not rebuild and path.is_file()
        ):  # a cache made elsewhere, used without its source
            content, reason = _read_cache(path)
            if content is not None:
                logger.info(
                    "qm9pack is not installed: using the cache %s without checking it against qm9pack's CSV files",
                    path,
                )
                return path, content
        raise
    if csv_dir is None and installed_version() not in (QM9PACK_VERSION, None):
        logger.warning(
            "qm9pack %s is installed; this converter was checked on %s (%s)",
            installed_version(),
            QM9PACK_VERSION,
            INSTALL_HINT,
        )
    key = source_key(paths, limit=limit, finder=finder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if path.is_file() and not rebuild:
            content, reason = _read_cache(path)
            if content is not None and content.get("source") == key:
                return path, content
            if content is not None:
                reason = f"it is stale ({_differences(content.get('source'), key)})"
            logger.warning("the QM9 cache %s is rebuilt: %s", path, reason)
        elif not path.is_file():
            logger.warning(
                "converting QM9 from qm9pack once into %s (bonds with RDKit: about 2.5 CPU-minutes for all 130,831 molecules, over %d processes)",
                path,
                default_workers() if workers is None else workers,
            )
        return path, build_cache(
            path, paths, limit=limit, finder=finder, workers=workers, progress=progress
        )


@functools.lru_cache(maxsize=2)
def _molecules_cached(path: str, modified_ns: int, size: int, layout: str) -> QM9Molecules:
    content, reason = _read_cache(Path(path))
    if content is None:
        raise DatasetError(
            f"the QM9 cache {path} changed while it was read ({reason}); run again to rebuild it"
        )
    return molecules_from_tensors(content["tensors"], layout=layout, source=Path(path))  # type: ignore[arg-type]


def load_qm9pack(
    cache_dir: str | Path | None = None,
    /,
    *,
    layout: FeatureLayout = "pyg",
    limit: int | None = None,
    csv_dir: str | Path | None = None,
    rebuild: bool = False,
    finder: BondFinder = rdkit_bonds,
    workers: int | None = None,
    progress: bool = True,
) -> QM9Molecules:
    """QM9 from qm9pack in PyG's layout (`QM9Molecules`, feature `layout` "pyg" or "sanitised"):
    from the cache in `cache_dir` (default `default_cache_dir()`), converted first where there is
    no valid cache. `limit` takes the first molecules only (a cache of its own); `csv_dir` reads
    CSV files in qm9pack's format from another folder. Repeated loads of one file version share
    one object."""
    if layout not in FEATURE_LAYOUTS:
        raise MTLInputError(f"layout must be one of {', '.join(FEATURE_LAYOUTS)}, got {layout!r}")
    path, _ = prepare_cache(
        cache_dir,
        limit=limit,
        csv_dir=csv_dir,
        rebuild=rebuild,
        finder=finder,
        workers=workers,
        progress=progress,
    )
    stat = path.stat()
    return _molecules_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, layout)


def check_source(cache_dir: str | Path | None, /) -> None:
    """Fail early, before any training, where `load_qm9pack(cache_dir)` cannot work: the cache
    folder is a file, or there is no cache and no qm9pack to build it from (a valid cache is used
    without qm9pack, unchecked against its CSV files)."""
    path = cache_path(cache_dir)
    if path.parent.exists() and not path.parent.is_dir():
        raise DatasetError(
            f"--data-root {path.parent} is a file; with --data-source qm9pack it names the cache folder (default {default_cache_dir()})"
        )
    if not path.is_file():
        qm9pack_data_dir()


def cache_info(
    cache_dir: str | Path | None = None, /, *, limit: int | None = None
) -> dict[str, Any]:
    """The source key and conversion numbers of an existing valid cache."""
    path = cache_path(cache_dir, limit=limit)
    content, reason = _read_cache(path) if path.is_file() else (None, "it does not exist")
    if content is None:
        raise DatasetError(f"no valid QM9 cache at {path}: {reason}")
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "source": content["source"],
        "stats": content["stats"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.data.qm9pack`: convert (or check) the cache and print its numbers."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data.qm9pack",
        description="Convert QM9 from qm9pack once into PyG's layout and cache it.",
    )
    parser.add_argument(
        "--cache-dir", default=None, help=f"cache folder (default {default_cache_dir()})"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="only the first N molecules (a cache of its own)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"conversion processes (default {default_workers()})",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="convert again even if a valid cache exists"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path, _ = prepare_cache(
            args.cache_dir, limit=args.limit, rebuild=args.rebuild, workers=args.workers
        )
        info = cache_info(args.cache_dir, limit=args.limit)
    except MTLInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stats = dict(info["stats"])
    stats["hueckel_names"] = f"{len(stats['hueckel_names'])} names"
    print(json.dumps({"path": info["path"], "bytes": info["bytes"], **stats}, indent=1))
    return 0


if (
    __name__ == "__main__"
):  # run as the package's module, so that worker processes find its functions
    from benchmarks.data.qm9pack import main as package_main

    sys.exit(package_main())
