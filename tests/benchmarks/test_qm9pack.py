"""QM9 from the package qm9pack (issue 19): the CSV reader and PyG's targets, the layout of the
converted molecules, the cache (checksum, corrupt and stale caches rebuilt with a message), the
missing-extra errors and the `--data-source` wiring run without the optional extra, on a tiny CSV
in qm9pack's column format written here with a pure-Python bond finder. The checks of the real
data (RDKit bonds of gdb_1, the Hueckel fallback, aromatic features) are skipped where
`pip install -e .[qm9data]` has not been run."""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from benchmarks.data import qm9pack
from benchmarks.data.errors import DatasetError
from benchmarks.data.qm9 import EDGE_FEATURES, NODE_FEATURES, collate
from benchmarks.data.qm9pack import (
    CSV_FILES,
    INSTALL_HINT,
    KCALMOL_TO_EV,
    MoleculeBonds,
    atomisation_energies_kcal,
    cache_info,
    cache_path,
    check_source,
    checksum,
    load_qm9pack,
    prepare_cache,
    pyg_targets,
    read_rows,
)
from benchmarks.experiments.supervised import EXPERIMENTS, Config, planned_runs
from benchmarks.suites.qm9 import QM9PACK, make_qm9_suite
from core.errors import InvalidHyperparameterError, MTLInputError

HEADER = (
    "XYZ_file",
    "Index",
    "SMILES",
    "InChi",
    "N_atoms",
    "Stoichiometry",
    "Elements",
    "XYZ_Ang",
    "Mulliken_pop",
    "Harmonic_Freq_cmi",
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
"""qm9pack 1.0.3's columns, in its order."""
PROPERTIES = (
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
)
MOLECULES = (  # gdb_1 to gdb_4 of QM9: index, SMILES, elements, positions (Angstrom), PROPERTIES
    (
        1,
        "C",
        "CHHHH",
        "[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]",
        (
            "0.",
            "13.21",
            "-0.3877",
            "0.1171",
            "0.5048",
            "35.3641",
            "0.044749",
            "-40.47893",
            "-40.476062",
            "-40.475117",
            "-40.498597",
            "6.469",
            "157.7118",
            "157.70997",
            "157.70699",
        ),
    ),
    (
        2,
        "N",
        "NHHH",
        "[[-0.0404260543,1.0241077531,0.0625637998],[0.0172574639,0.0125452063,-0.0273771593],[0.9157893661,1.3587451948,-0.0287577581],[-0.5202777357,1.3435321258,-0.7755426124]]",
        (
            "1.6256",
            "9.46",
            "-0.257",
            "0.0829",
            "0.3399",
            "26.1563",
            "0.034358",
            "-56.525887",
            "-56.523026",
            "-56.522082",
            "-56.544961",
            "6.316",
            "293.60975",
            "293.54111",
            "191.39397",
        ),
    ),
    (
        3,
        "O",
        "OHH",
        "[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],[0.8717903737,1.3007924048,0.0006931336]]",
        (
            "1.8511",
            "6.31",
            "-0.2928",
            "0.0687",
            "0.3615",
            "19.0002",
            "0.021375",
            "-76.404702",
            "-76.401867",
            "-76.400922",
            "-76.422349",
            "6.002",
            "799.58812",
            "437.90386",
            "282.94545",
        ),
    ),
    (
        4,
        "C#C",
        "CCHH",
        "[[0.5995394918,0.,1.],[-0.5995394918,0.,1.],[-1.6616385861,0.,1.],[1.6616385861,0.,1.]]",
        (
            "0.",
            "16.28",
            "-0.2845",
            "0.0506",
            "0.3351",
            "59.5248",
            "0.026841",
            "-77.308427",
            "-77.305527",
            "-77.304583",
            "-77.327429",
            "8.574",
            "0.",
            "35.6100361",
            "35.6100361",
        ),
    ),
)
GDB_1_ATOMISATION_KCAL = (-395.999594594, -398.643290011, -401.014646522, -372.471772148)
"""U0_atom, U_atom, H_atom, G_atom of gdb_1 (CH4) in MoleculeNet's gdb9.sdf.csv, kcal/mol."""
CH4_C = [0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 4]
CH4_H = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
HAS_EXTRA = (
    importlib.util.find_spec("rdkit") is not None
    and importlib.util.find_spec("qm9pack") is not None
)

_RADII = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57}
CALLS = {"count": 0}


def distance_bonds(elements: str, positions: Sequence[float], smiles: str) -> MoleculeBonds:
    """A pure-Python bond finder for the tests: single bonds within 1.25 x the covalent radii;
    heavy atoms flagged sp3 (so that the sanitised layout differs from PyG's)."""
    CALLS["count"] += 1
    n = len(elements)
    bonds = []
    for i in range(n):
        for j in range(i + 1, n):
            if math.dist(positions[3 * i : 3 * i + 3], positions[3 * j : 3 * j + 3]) < 1.25 * (
                _RADII[elements[i]] + _RADII[elements[j]]
            ):
                bonds.append((i, j, 0, 0))
    return MoleculeBonds(
        "vdw", tuple(bonds), (0,) * n, tuple(0 if e == "H" else 3 for e in elements)
    )


def write_csv(folder: Path, molecules=MOLECULES) -> Path:
    """The molecules in qm9pack's column format over its three part files (the last may be empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [molecules[:2], molecules[2:3], molecules[3:]]
    for name, part in zip(CSV_FILES, parts):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HEADER, quoting=csv.QUOTE_NONNUMERIC)
            writer.writeheader()
            for index, smiles, elements, xyz, values in part:
                row = {
                    "XYZ_file": f"dsgdb9nsd_{index:06d}.xyz",
                    "Index": index,
                    "SMILES": smiles,
                    "InChi": "InChI=1S/test",
                    "N_atoms": len(elements),
                    "Stoichiometry": "[0,0,0,0,0]",
                    "Elements": "[" + ",".join(f"'{e}'" for e in elements) + "]",
                    "XYZ_Ang": xyz,
                    "Mulliken_pop": "[]",
                    "Harmonic_Freq_cmi": "[]",
                }
                row.update(zip(PROPERTIES, values))
                writer.writerow(row)
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def csv_dir(tmp_path) -> Path:
    return write_csv(tmp_path / "csv")


def _load(cache: Path, csv_dir: Path, **kwargs):
    return load_qm9pack(
        cache, csv_dir=csv_dir, finder=distance_bonds, workers=1, progress=False, **kwargs
    )


# --------------------------------------------------------------------------- targets


def test_atomisation_energies_of_gdb_1_match_the_published_values() -> None:
    energies = [float(v) for v in MOLECULES[0][4][7:11]]
    assert atomisation_energies_kcal("CHHHH", energies) == pytest.approx(
        GDB_1_ATOMISATION_KCAL, abs=1e-6
    )


def test_targets_follow_pyg_columns_and_units(csv_dir) -> None:
    molecules = read_rows([csv_dir / name for name in CSV_FILES])
    assert [m.name for m in molecules] == ["gdb_1", "gdb_2", "gdb_3", "gdb_4"]
    assert [m.elements for m in molecules] == ["CHHHH", "NHHH", "OHH", "CCHH"]
    y = molecules[0].y
    assert len(y) == 19
    # mu, alpha, HOMO, LUMO, gap (eV), <R^2>, ZPVE, U0, U, H, G (eV), c_v, 4 atomisation energies (eV), A, B, C
    assert y[:2] == (0.0, 13.21)
    assert y[2:5] == pytest.approx(
        [-0.3877 * 27.211386246, 0.1171 * 27.211386246, 0.5048 * 27.211386246]
    )
    assert y[5] == 35.3641 and y[11] == 6.469
    assert y[6:11] == pytest.approx(
        [v * 27.211386246 for v in (0.044749, -40.47893, -40.476062, -40.475117, -40.498597)]
    )
    assert y[12:16] == pytest.approx([v * KCALMOL_TO_EV for v in GDB_1_ATOMISATION_KCAL], rel=1e-9)
    assert y[16:] == (157.7118, 157.70997, 157.70699)
    assert molecules[3].positions[:3] == (0.5995394918, 0.0, 1.0)  # qm9pack writes "0." and "1."
    row = dict(zip(PROPERTIES, MOLECULES[1][4]))
    assert pyg_targets(row, "NHHH") == pytest.approx(list(molecules[1].y))


def test_reader_rejects_foreign_csv_files(tmp_path) -> None:
    folder = write_csv(tmp_path / "csv")
    text = (folder / CSV_FILES[0]).read_text().replace('"HOMO_au"', '"HOMO"')
    (folder / CSV_FILES[0]).write_text(text)
    with pytest.raises(DatasetError, match="lacks the columns HOMO_au"):
        read_rows([folder / name for name in CSV_FILES])
    (folder / CSV_FILES[1]).unlink()
    with pytest.raises(DatasetError, match="qm9_part2.csv"):
        _load(tmp_path / "cache", folder)
    with pytest.raises(MTLInputError, match="limit"):
        _load(tmp_path / "cache", write_csv(tmp_path / "other"), limit=0)


# --------------------------------------------------------------------------- layout


def test_conversion_gives_pyg_layout(tmp_path, csv_dir) -> None:
    molecules = _load(tmp_path / "cache", csv_dir)
    assert len(molecules) == 4
    methane = molecules.graph(0)
    assert methane.x.tolist() == [CH4_C] + [CH4_H] * 4
    assert methane.edge_index.tolist() == [
        [0, 0, 0, 0, 1, 2, 3, 4],
        [1, 2, 3, 4, 0, 0, 0, 0],
    ]  # sorted by (row, col), as PyG sorts
    assert methane.edge_attr.tolist() == [[1.0, 0.0, 0.0, 0.0]] * 8
    assert methane.z.tolist() == [6, 1, 1, 1, 1]
    assert methane.pos[0].tolist() == pytest.approx([-0.0126981359, 1.0858041578, 0.0080009958])
    assert methane.y.shape == (1, 19) and methane.y.dtype == torch.float32
    assert molecules.graph(2).x[:, 10].tolist() == [2, 0, 0]  # water: O has 2 hydrogens
    assert molecules.x.shape[1] == NODE_FEATURES and not molecules.x[:, 6:10].any()
    batch, targets = collate([(molecules.graph(i), {"t": molecules.y[i, 0]}) for i in range(4)])
    assert batch.edge_attr.shape == (sum(n * (n - 1) for n in (5, 4, 3, 4)), EDGE_FEATURES)
    assert targets["t"].shape == (4,)


def test_sanitised_layout_fills_the_rdkit_columns(tmp_path, csv_dir) -> None:
    pyg = _load(tmp_path / "cache", csv_dir)
    sanitised = _load(tmp_path / "cache", csv_dir, layout="sanitised")
    assert sanitised.graph(0).x[0].tolist() == CH4_C[:9] + [
        1,
        4,
    ]  # the test finder flags heavy atoms sp3
    assert torch.equal(sanitised.x[:, [0, 1, 2, 3, 4, 5, 10]], pyg.x[:, [0, 1, 2, 3, 4, 5, 10]])
    assert torch.equal(sanitised.edge_index, pyg.edge_index)
    with pytest.raises(MTLInputError, match="layout"):
        _load(tmp_path / "cache", csv_dir, layout="rdkit")


# --------------------------------------------------------------------------- cache


def test_cache_is_written_once_with_a_checksum(tmp_path, csv_dir, caplog) -> None:
    cache = tmp_path / "cache"
    CALLS["count"] = 0
    with caplog.at_level(logging.WARNING, logger="benchmarks.data.qm9pack"):
        first = _load(cache, csv_dir)
    assert CALLS["count"] == 4 and "converting QM9 from qm9pack once" in caplog.text
    caplog.clear()
    second = _load(cache, csv_dir)
    assert CALLS["count"] == 4 and second is first and caplog.text == ""
    info = cache_info(cache)
    assert (
        info["path"] == str(cache / "qm9pack.pt")
        and info["stats"]["molecules"] == 4
        and info["stats"]["vdw_molecules"] == 4
    )
    assert info["stats"]["failed_molecules"] == 0 and info["source"]["finder"].endswith(
        "distance_bonds"
    )
    content = torch.load(cache / "qm9pack.pt", weights_only=True)
    assert content["checksum"] == checksum(content["tensors"])


def test_limit_has_a_cache_of_its_own(tmp_path, csv_dir) -> None:
    molecules = _load(tmp_path / "cache", csv_dir, limit=2)
    assert len(molecules) == 2 and cache_path(tmp_path / "cache", limit=2).is_file()
    assert not cache_path(tmp_path / "cache").exists()


def test_corrupt_cache_is_rebuilt_with_a_message(tmp_path, csv_dir, caplog) -> None:
    cache = tmp_path / "cache"
    expected = _load(cache, csv_dir)
    path = cache / "qm9pack.pt"
    content = torch.load(path, weights_only=True)
    content["tensors"]["y"][0, 0] += 1.0  # content changed, checksum kept
    torch.save(content, path)
    with caplog.at_level(logging.WARNING, logger="benchmarks.data.qm9pack"):
        rebuilt = _load(cache, csv_dir)
    assert "is rebuilt: its checksum does not match its content (corrupt)" in caplog.text
    assert torch.equal(rebuilt.y, expected.y)
    caplog.clear()
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING, logger="benchmarks.data.qm9pack"):
        rebuilt = _load(cache, csv_dir)
    assert "is rebuilt: it cannot be read" in caplog.text
    assert torch.equal(rebuilt.x, expected.x)


def test_stale_cache_is_rebuilt_with_a_message(tmp_path, caplog) -> None:
    csv_dir = write_csv(tmp_path / "csv")
    cache = tmp_path / "cache"
    assert len(_load(cache, csv_dir)) == 4
    write_csv(csv_dir, MOLECULES[:3])  # other CSV files: the cache is stale
    with caplog.at_level(logging.WARNING, logger="benchmarks.data.qm9pack"):
        assert len(_load(cache, csv_dir)) == 3
    assert "is rebuilt: it is stale (files" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="benchmarks.data.qm9pack"):
        prepare_cache(
            cache, csv_dir=csv_dir, finder=distance_bonds, workers=1, progress=False, rebuild=True
        )
        prepare_cache(cache, csv_dir=csv_dir, finder=distance_bonds, workers=1, progress=False)
    assert caplog.text == ""  # an asked-for rebuild is silent; the rebuilt cache is used


# --------------------------------------------------------------------------- the optional extra


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "qm9pack" else real(name, *args),
    )
    with pytest.raises(DatasetError, match=r"pip install -e \.\[qm9data\]"):
        load_qm9pack(tmp_path / "cache", progress=False)
    with pytest.raises(DatasetError, match=r"pip install -e \.\[qm9data\]"):
        check_source(str(tmp_path / "cache"))
    assert INSTALL_HINT == "pip install -e .[qm9data]"


def test_a_valid_cache_is_used_without_qm9pack(tmp_path, monkeypatch) -> None:
    csv_dir = write_csv(tmp_path / "csv")
    cache = tmp_path / "cache"
    built, _ = prepare_cache(
        cache, csv_dir=csv_dir, finder=distance_bonds, workers=1, progress=False
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "qm9pack" else real(name, *args),
    )
    check_source(str(cache))
    assert (
        len(load_qm9pack(cache, progress=False)) == 4
    )  # no CSV files to compare with: the cache as it is
    built.write_bytes(built.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"pip install -e \.\[qm9data\]"):
        load_qm9pack(cache, progress=False)


def test_missing_rdkit_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "rdkit", None)  # import rdkit raises ImportError
    qm9pack._rdkit.cache_clear()
    try:
        with pytest.raises(DatasetError, match=r"needs RDKit: pip install -e \.\[qm9data\]"):
            qm9pack.rdkit_bonds("CHHHH", [0.0] * 15, "C")
    finally:
        qm9pack._rdkit.cache_clear()


def test_modules_import_without_rdkit_or_qm9pack() -> None:
    code = (
        "import sys; sys.modules['rdkit'] = None; sys.modules['qm9pack'] = None; sys.modules['pandas'] = None\n"
        "import benchmarks.data.qm9, benchmarks.data.qm9pack, benchmarks.suites.qm9, benchmarks.experiments.supervised\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_pyproject_declares_the_extra() -> None:
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'qm9data = ["qm9pack==1.0.3", "rdkit", "pandas"]' in text
    assert "qm9pack" not in (Path(__file__).parents[2] / "requirements.txt").read_text()


# --------------------------------------------------------------------------- wiring


def test_data_source_is_part_of_the_run_settings() -> None:
    pyg = planned_runs(Config("qm9", methods="ls", seeds="0", no_single_task=True))
    assert "data_source" not in pyg[0].config  # PyG runs keep their ids
    pack = planned_runs(
        Config("qm9", methods="ls", seeds="0", no_single_task=True, data_source="qm9pack")
    )
    assert pack[0].config["data_source"] == "qm9pack" and pack[0].run_id != pyg[0].run_id
    assert EXPERIMENTS["qm9"].load_suite("qm9pack") is QM9PACK
    assert Config("qm9", data_source="qm9pack-sanitised").argv(skip=("experiment",)) == [
        "--data-source",
        "qm9pack-sanitised",
    ]


def test_bad_data_source_input_says_how_to_fix_it(tmp_path) -> None:
    from benchmarks.experiments.supervised import run

    with pytest.raises(
        InvalidHyperparameterError, match="multimnist has no --data-source 'qm9pack'"
    ):
        planned_runs(Config("multimnist", data_source="qm9pack"))
    with pytest.raises(
        InvalidHyperparameterError,
        match="qm9 has no --data-source 'gdb9'; choose one of: qm9pack, qm9pack-sanitised",
    ):
        planned_runs(Config("qm9", data_source="gdb9"))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(
        DatasetError, match="is a file; with --data-source qm9pack it names the cache folder"
    ):
        run(Config("qm9", data_source="qm9pack", data_root=str(a_file), out=tmp_path / "out"))
    with pytest.raises(InvalidHyperparameterError, match="or --data-source qm9pack"):
        run(Config("qm9", out=tmp_path / "out"))
    with pytest.raises(MTLInputError, match="layout"):
        make_qm9_suite(layout="sanitised")  # a layout of qm9pack's only


# --------------------------------------------------------------------------- the real data (the extra)


needs_extra = pytest.mark.skipif(
    not HAS_EXTRA, reason=f"the optional extra is not installed ({INSTALL_HINT})"
)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    pytest.importorskip("rdkit", reason=f"the optional extra is not installed ({INSTALL_HINT})")
    if (
        importlib.util.find_spec("qm9pack") is None
    ):  # found, never imported (its module needs pkg_resources)
        pytest.skip(f"the optional extra is not installed ({INSTALL_HINT})")
    folder = tmp_path_factory.mktemp("qm9pack_cache")
    prepare_cache(folder, limit=800, workers=1, progress=False)
    return folder


@needs_extra
def test_real_gdb_1_is_pyg_methane(real_cache) -> None:
    molecules = load_qm9pack(real_cache, limit=800, progress=False)
    methane = molecules.graph(0)
    assert methane.x.tolist() == [CH4_C] + [CH4_H] * 4
    assert (
        methane.edge_index.shape == (2, 8)
        and methane.edge_attr.tolist() == [[1.0, 0.0, 0.0, 0.0]] * 8
    )
    assert (methane.y[0, 12:16].double() / KCALMOL_TO_EV).tolist() == pytest.approx(
        GDB_1_ATOMISATION_KCAL, rel=1e-6
    )
    assert "qm9pack" not in sys.modules  # the CSV files are read without importing the package


@needs_extra
def test_real_bonds_hueckel_fallback_and_aromaticity(real_cache) -> None:
    stats = cache_info(real_cache, limit=800)["stats"]
    assert stats["molecules"] == 800 and stats["failed_molecules"] == 0
    assert stats["hueckel_names"] == [
        "gdb_759"
    ]  # NC1=CN=NO1: the van der Waals graph is not the SMILES graph
    pyg = load_qm9pack(real_cache, limit=800, progress=False)
    sanitised = load_qm9pack(real_cache, limit=800, layout="sanitised", progress=False)
    assert not pyg.x[:, 6:10].any() and pyg.edge_attr[:, 3].sum() == 0  # PyG: unsanitised, Kekule
    assert sanitised.x[:, 6].sum() > 0 and sanitised.edge_attr[:, 3].sum() > 0
    heavy = sanitised.z > 1
    assert bool(
        (sanitised.x[heavy, 7:10].sum(1) == 1).all()
    )  # every heavy atom sp, sp2 or sp3 here
    assert torch.equal(pyg.edge_attr[:, :3].sum(1), torch.ones(pyg.edge_attr.shape[0]))


@needs_extra
def test_real_subset_trains_through_the_suite(real_cache) -> None:
    suite = make_qm9_suite(source="qm9pack", limit=800, test_size=100, val_size=100)
    train = suite.datasets(str(real_cache), "train")
    assert len(train) == 600
    batch, targets = suite.collate([train[i] for i in range(4)])
    predictions = suite.make_model()(batch)
    losses = suite.task_losses(predictions, targets)
    assert len(losses) == 11 and all(torch.isfinite(v) for v in losses.values())
