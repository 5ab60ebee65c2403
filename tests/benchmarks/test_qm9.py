"""QM9: the PyG-layout reader and fixture writer, splits and normalisation, complete-graph
batching, the MPNN (shapes, invariances, parameter partition, agreement with PyG's NNConv and
Set2Set), the MAE accumulator and one engine step (spec dibs.md §6.4)."""

from __future__ import annotations

import importlib.util
import io
import pickletools
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import core
from benchmarks.data.qm9 import (
    EDGE_FEATURES,
    PROCESSED_FILE,
    RAW_FILE,
    TARGET_COLUMNS,
    DatasetError,
    MoleculeBatch,
    MoleculeGraph,
    batch_molecules,
    collate,
    load_qm9,
    read_qm9_file,
    restricted_pickle,
    split_indices,
    write_fixture,
)
from benchmarks.models.mpnn import MPNN
from benchmarks.suites.qm9 import (
    BASE_VALUES,
    METRICS,
    PROTOCOL,
    QM9,
    TASKS,
    QM9MeanAbsoluteError,
    make_qm9_suite,
    task_losses,
)

COUNT = 40
HAS_PYG = importlib.util.find_spec("torch_geometric") is not None
needs_pyg = pytest.mark.skipif(not HAS_PYG, reason="torch_geometric is not installed")


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead (and spin on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qm9")
    write_fixture(folder, count=COUNT, seed=0)
    return folder


@pytest.fixture(scope="module")
def raw_molecules(root) -> list[dict]:
    return torch.load(root / RAW_FILE, weights_only=True)


def _graphs(root: Path, count: int) -> list[MoleculeGraph]:
    molecules = load_qm9(root)
    return [molecules.graph(i) for i in range(count)]


# --------------------------------------------------------------------------- reader


def test_reader_round_trips_the_fixture(root, raw_molecules) -> None:
    molecules = load_qm9(root)
    assert (
        len(molecules) == COUNT and molecules.x.shape[1] == 11 and molecules.y.shape == (COUNT, 19)
    )
    for index, expected in enumerate(raw_molecules):
        graph = molecules.graph(index)
        for key in ("x", "edge_index", "edge_attr", "y", "pos", "z"):
            assert torch.equal(getattr(graph, key), expected[key]), key
    from_raw = read_qm9_file(root / RAW_FILE)  # the RDKit-free download layout
    assert torch.equal(from_raw.x, molecules.x) and torch.equal(
        from_raw.edge_index, molecules.edge_index
    )
    assert torch.equal(from_raw.node_ptr, molecules.node_ptr) and torch.equal(
        from_raw.y, molecules.y
    )


def test_fixture_has_pygs_processed_layout(root) -> None:
    with zipfile.ZipFile(root / PROCESSED_FILE) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    text = io.StringIO()
    pickletools.dis(pickled, out=text)
    assert "GLOBAL     'torch_geometric.data.data Data'" in text.getvalue()
    content = torch.load(root / PROCESSED_FILE, weights_only=False, pickle_module=restricted_pickle)
    data, slices, data_class = content
    assert list(data) == ["x", "edge_index", "edge_attr", "y", "pos", "z", "smiles", "name", "idx"]
    assert (data_class.__module__, data_class.__qualname__) == ("torch_geometric.data.data", "Data")
    assert set(slices) == set(data) and torch.equal(slices["y"], torch.arange(COUNT + 1))
    assert data["name"][:2] == ["gdb_1", "gdb_2"] and torch.equal(data["idx"], torch.arange(COUNT))
    for name in ("pre_transform.pt", "pre_filter.pt"):
        assert torch.load(root / "processed" / name, weights_only=True) == "None"


def test_reader_and_writer_do_not_import_torch_geometric(tmp_path, monkeypatch) -> None:
    for name in [
        n for n in sys.modules if n == "torch_geometric" or n.startswith("torch_geometric.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # any import of it now fails
    path = write_fixture(tmp_path, count=3, seed=5)
    assert len(read_qm9_file(path)) == 3


def test_single_molecule_is_stored_without_slices(tmp_path) -> None:
    path = write_fixture(tmp_path, count=1, seed=2)
    assert torch.load(path, weights_only=False, pickle_module=restricted_pickle)[1] is None
    molecules = read_qm9_file(path)
    raw = torch.load(tmp_path / RAW_FILE, weights_only=True)[0]
    assert len(molecules) == 1 and torch.equal(molecules.graph(0).edge_index, raw["edge_index"])


@needs_pyg
def test_reader_agrees_with_torch_geometric(root, tmp_path) -> None:
    from torch_geometric.data import InMemoryDataset

    class Processed(InMemoryDataset):
        def __init__(self, path: Path) -> None:
            super().__init__(None)
            self.load(str(path))

    datasets = [Processed(root / PROCESSED_FILE)]
    if importlib.util.find_spec("rdkit") is None:  # QM9 then looks for raw/qm9_v3.pt, which exists
        from torch_geometric.datasets import QM9 as PyGQM9

        datasets.append(PyGQM9(str(root)))
    molecules = load_qm9(root)
    for dataset in datasets:
        assert len(dataset) == COUNT
        for index in range(COUNT):
            ours, theirs = molecules.graph(index), dataset[index]
            for key in ("x", "edge_index", "edge_attr", "y", "pos", "z"):
                assert torch.equal(getattr(ours, key), getattr(theirs, key)), (index, key)
            assert theirs.name == f"gdb_{index + 1}"
    # files written by torch_geometric itself: the current layout, the pre-2.4 (Data, slices) one
    data_list = [datasets[0][i] for i in range(COUNT)]
    InMemoryDataset.save(data_list, str(tmp_path / "saved.pt"))
    torch.save(InMemoryDataset.collate(data_list), tmp_path / "legacy.pt")
    for name in ("saved.pt", "legacy.pt"):
        read = read_qm9_file(tmp_path / name)
        assert torch.equal(read.x, molecules.x) and torch.equal(read.edge_attr, molecules.edge_attr)
        assert torch.equal(read.y, molecules.y) and torch.equal(read.edge_ptr, molecules.edge_ptr)


def test_missing_root_and_file_name_the_expected_path(tmp_path) -> None:
    with pytest.raises(DatasetError, match="no embedded default"):
        load_qm9(None)
    with pytest.raises(DatasetError, match=r"does not exist.*processed/data_v3\.pt"):
        load_qm9(tmp_path / "absent")
    with pytest.raises(DatasetError, match=r"processed/data_v3\.pt.*PyTorch Geometric"):
        load_qm9(tmp_path)


def test_corrupt_and_foreign_files_raise_dataset_error(tmp_path) -> None:
    (tmp_path / "processed").mkdir()
    path = tmp_path / PROCESSED_FILE
    path.write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match=r"data_v3\.pt is not a readable"):
        load_qm9(tmp_path)
    torch.save({"x": torch.zeros(2, 11)}, path)
    with pytest.raises(DatasetError, match="holds a dict"):
        read_qm9_file(path)
    torch.save(({"x": torch.zeros(2, 11)}, {"x": torch.tensor([0, 2])}), path)
    with pytest.raises(DatasetError, match="'edge_index' is missing"):
        read_qm9_file(path)
    torch.save((torch.nn.Linear, None), path)  # a global that is no part of a PyG file
    with pytest.raises(
        DatasetError, match="refusing to load the global torch.nn.modules.linear.Linear"
    ):
        read_qm9_file(path)


def test_inconsistent_slices_raise(tmp_path) -> None:
    path = write_fixture(tmp_path, count=4, seed=1)
    data, slices, _ = torch.load(path, weights_only=False, pickle_module=restricted_pickle)
    slices["x"] = slices["x"].clone()
    slices["x"][-1] += 1
    broken = tmp_path / "broken.pt"
    torch.save((data, slices, None), broken)
    with pytest.raises(DatasetError, match="saved data class"):
        read_qm9_file(broken)
    torch.save((data, slices), broken)
    with pytest.raises(DatasetError, match="slices"):
        read_qm9_file(broken)


# --------------------------------------------------------------------------- splits


def test_split_sizes_and_train_only_normalisation(root) -> None:
    suite = make_qm9_suite(test_size=8, val_size=6, split_seed=3)
    train, val, test = (suite.datasets(str(root), split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (COUNT - 14, 6, 8)
    parts = split_indices(COUNT, seed=3, test_size=8, val_size=6)
    assert torch.equal(torch.tensor(test.indices), parts["test"]) and torch.equal(
        torch.tensor(train.indices), parts["train"]
    )
    assert sorted(train.indices + val.indices + test.indices) == list(range(COUNT))
    y = load_qm9(root).y[:, list(TARGET_COLUMNS)].double()
    mean, std = y[parts["train"]].mean(0), y[parts["train"]].std(0)
    for split, dataset in (("train", train), ("val", val), ("test", test)):
        expected = (y[parts[split]] - mean) / std
        assert torch.allclose(dataset.targets.double(), expected, atol=1e-5), split
    assert torch.allclose(
        train.targets.double().mean(0), torch.zeros(11, dtype=torch.float64), atol=1e-5
    )
    assert torch.allclose(
        train.targets.double().std(0), torch.ones(11, dtype=torch.float64), atol=1e-5
    )
    assert not torch.allclose(
        val.targets.double().mean(0), torch.zeros(11, dtype=torch.float64), atol=1e-3
    )  # not refitted
    graph, targets = train[0]
    assert list(targets) == list(TASKS) and torch.equal(
        graph.x, load_qm9(root).graph(train.indices[0]).x
    )
    whole = make_qm9_suite(test_size=8, val_size=6, split_seed=3, normalisation="all").datasets(
        str(root), "train"
    )
    assert torch.allclose(
        whole.targets.double(), (y[parts["train"]] - y.mean(0)) / y.std(0), atol=1e-5
    )


def test_split_sizes_must_leave_a_training_split() -> None:
    with pytest.raises(DatasetError, match="cannot give"):
        split_indices(20, seed=0, test_size=10, val_size=10)


# --------------------------------------------------------------------------- batching


def _naive_complete(graph: MoleculeGraph) -> tuple[torch.Tensor, torch.Tensor]:
    bonds = {(int(a), int(b)): graph.edge_attr[k] for k, (a, b) in enumerate(graph.edge_index.t())}
    pairs = [(i, j) for i in range(graph.num_nodes) for j in range(graph.num_nodes) if i != j]
    attributes = torch.stack([bonds.get(pair, torch.zeros(4)) for pair in pairs])
    return torch.tensor(pairs).t(), attributes


def test_collate_builds_complete_graphs_with_distances(root) -> None:
    graphs = _graphs(root, 6)
    targets = [{name: torch.tensor(float(i)) for name in TASKS} for i in range(6)]
    batch, stacked = collate(list(zip(graphs, targets)))
    assert (
        isinstance(batch, MoleculeBatch)
        and batch.num_graphs == 6
        and batch.edge_attr.shape[1] == EDGE_FEATURES
    )
    assert torch.equal(stacked["mu"], torch.arange(6.0)) and list(stacked) == list(TASKS)
    assert torch.equal(
        batch.batch,
        torch.repeat_interleave(torch.arange(6), torch.tensor([g.num_nodes for g in graphs])),
    )
    offset, edge = 0, 0
    for graph in graphs:
        pairs, attributes = _naive_complete(graph)
        count = pairs.shape[1]
        assert torch.equal(batch.edge_index[:, edge : edge + count], pairs + offset)
        assert torch.equal(batch.edge_attr[edge : edge + count, :4], attributes)
        distance = (graph.pos[pairs[1]] - graph.pos[pairs[0]]).norm(dim=-1)
        assert torch.allclose(batch.edge_attr[edge : edge + count, 4], distance)
        offset, edge = offset + graph.num_nodes, edge + count
    assert edge == batch.edge_index.shape[1]


@needs_pyg
def test_edge_features_match_torch_geometric_distance(root) -> None:
    from torch_geometric.data import Data
    from torch_geometric.transforms import Distance

    graphs = _graphs(root, 5)
    batch = batch_molecules(graphs)
    edge = 0
    for graph in graphs:
        pairs, attributes = _naive_complete(graph)
        expected = Distance(norm=False)(
            Data(x=graph.x, pos=graph.pos, edge_index=pairs, edge_attr=attributes)
        ).edge_attr
        assert torch.equal(batch.edge_attr[edge : edge + pairs.shape[1]], expected)
        edge += pairs.shape[1]


# --------------------------------------------------------------------------- model


def test_mpnn_shapes_and_parameter_partition(root) -> None:
    torch.manual_seed(0)
    model = MPNN(TASKS)
    batch = batch_molecules(_graphs(root, 7))
    predictions = model(batch)
    assert list(predictions) == list(TASKS) and all(p.shape == (7,) for p in predictions.values())
    assert torch.allclose(model.decode(model.encode(batch))["mu"], predictions["mu"])
    shared, heads = model.shared_parameters(), model.task_parameters()
    head_ids = [id(p) for name in TASKS for p in heads[name]]
    assert (
        len(set(map(id, shared)) | set(head_ids))
        == len(shared) + len(head_ids)
        == len(list(model.parameters()))
    )
    assert (
        sum(p.numel() for p in shared) == 616_960
        and sum(p.numel() for p in model.parameters()) == 617_675
    )
    assert all(len(heads[name]) == 2 and heads[name][0].shape == (1, 64) for name in TASKS)
    shared_modules = {
        id(p)
        for m in (model.lin0, model.conv, model.gru, model.set2set, model.lin1)
        for p in m.parameters()
    }
    assert shared_modules == set(map(id, shared))


def _relabel(graph: MoleculeGraph, generator: torch.Generator) -> MoleculeGraph:
    order = torch.randperm(graph.num_nodes, generator=generator)  # new node k is old node order[k]
    new_label = torch.empty_like(order)
    new_label[order] = torch.arange(graph.num_nodes)
    bonds = torch.randperm(graph.edge_index.shape[1], generator=generator)
    return MoleculeGraph(
        x=graph.x[order],
        edge_index=new_label[graph.edge_index[:, bonds]],
        edge_attr=graph.edge_attr[bonds],
        y=graph.y,
        pos=graph.pos[order],
    )


def test_predictions_are_invariant_to_node_relabelling_and_batch_company(root) -> None:
    torch.manual_seed(1)
    model = MPNN(TASKS).double()
    graphs = _graphs(root, 8)
    generator = torch.Generator().manual_seed(0)

    def predict(items: list[MoleculeGraph]) -> torch.Tensor:
        batch = batch_molecules(items)
        batch = MoleculeBatch(
            batch.x.double(),
            batch.edge_index,
            batch.edge_attr.double(),
            batch.batch,
            batch.num_graphs,
        )
        with torch.no_grad():
            return torch.stack([model(batch)[name] for name in TASKS], dim=1)

    reference = predict(graphs)
    assert torch.allclose(
        predict([_relabel(g, generator) for g in graphs]), reference, rtol=0, atol=1e-12
    )
    assert torch.allclose(predict(graphs[3:5]), reference[3:5], rtol=0, atol=1e-12)


@needs_pyg
def test_convolution_and_set2set_match_torch_geometric(root) -> None:
    from torch_geometric.nn import NNConv
    from torch_geometric.nn import Set2Set as PyGSet2Set

    torch.manual_seed(2)
    model = MPNN(TASKS).double()
    with torch.no_grad():
        model.conv.bias.normal_()
    batch = batch_molecules(_graphs(root, 6))
    edge_attr = batch.edge_attr.double()
    theirs = NNConv(
        64, 64, model.conv.edge_network, aggr="mean"
    ).double()  # shares the edge network
    with torch.no_grad():
        theirs.lin.weight.copy_(model.conv.root.weight)
        theirs.bias.copy_(model.conv.bias)
    hidden = torch.randn(batch.x.shape[0], 64, dtype=torch.float64)
    assert torch.allclose(
        model.conv(hidden, batch.edge_index, edge_attr),
        theirs(hidden, batch.edge_index, edge_attr),
        rtol=0,
        atol=1e-12,
    )
    some_edges = batch.edge_index[
        :, ::3
    ]  # nodes with few or no incoming edges: mean over what exists, else 0
    assert torch.allclose(
        model.conv(hidden, some_edges, edge_attr[::3]),
        theirs(hidden, some_edges, edge_attr[::3]),
        rtol=0,
        atol=1e-12,
    )
    readout = PyGSet2Set(64, processing_steps=3).double()
    readout.lstm.load_state_dict(model.set2set.lstm.state_dict())
    assert torch.allclose(
        model.set2set(hidden, batch.batch, batch.num_graphs),
        readout(hidden, batch.batch),
        rtol=0,
        atol=1e-12,
    )


# --------------------------------------------------------------------------- metrics and losses


def test_mae_accumulator_in_original_units_with_mev() -> None:
    std = torch.arange(1.0, 12.0)  # task i has std i + 1
    accumulator = QM9MeanAbsoluteError(std)
    predictions = {name: torch.tensor([0.5, -1.0]) for name in TASKS}
    targets = {name: torch.tensor([0.0, 1.0]) for name in TASKS}
    accumulator.update(predictions, targets)  # |errors| 0.5, 2.0
    accumulator.update(
        {name: torch.tensor([1.0]) for name in TASKS}, {name: torch.tensor([1.5]) for name in TASKS}
    )  # 0.5
    values = accumulator.compute()
    assert list(values) == [m.name for m in METRICS]
    mean_error = (0.5 + 2.0 + 0.5) / 3
    for position, name in enumerate(TASKS):
        factor = 1000.0 if position in (2, 3, 5, 6, 7, 8, 9) else 1.0
        assert values[f"{name}_mae"] == pytest.approx(mean_error * (position + 1) * factor)
    assert values["homo_mae"] == pytest.approx(3000.0) and values["cv_mae"] == pytest.approx(11.0)


def test_suite_losses_metrics_and_protocol(root) -> None:
    predictions = {name: torch.tensor([1.0, 3.0]) for name in TASKS}
    targets = {name: torch.tensor([0.0, 1.0]) for name in TASKS}
    losses = task_losses(predictions, targets)
    assert list(losses) == list(TASKS) and all(
        loss.item() == pytest.approx(2.5) for loss in losses.values()
    )
    assert QM9.name == "qm9" and QM9.collate is collate and len(QM9.metrics) == 11
    assert not any(m.higher_is_better for m in QM9.metrics)
    assert list(BASE_VALUES.values()) == [
        0.0671,
        0.1814,
        60.576,
        53.915,
        0.5027,
        4.539,
        58.838,
        64.244,
        63.852,
        66.223,
        0.07212,
    ]
    assert (
        PROTOCOL.epochs,
        PROTOCOL.batch_size,
        PROTOCOL.lr,
        PROTOCOL.scheduler,
        PROTOCOL.gamma,
        PROTOCOL.patience,
        PROTOCOL.min_lr,
        PROTOCOL.selection,
    ) == (300, 120, 1e-3, "plateau", 0.7, 5, 1e-5, "best_val")
    fresh = make_qm9_suite(test_size=8, val_size=8)
    with pytest.raises(core.errors.MTLInputError, match="call suite.datasets"):
        fresh.make_accumulator()
    fresh.datasets(str(root), "val")
    accumulator = fresh.make_accumulator()
    train = fresh.datasets(str(root), "train")
    y = load_qm9(root).y[:, list(TARGET_COLUMNS)]
    assert torch.allclose(accumulator.scale[:2].float(), y[torch.tensor(train.indices)].std(0)[:2])


def test_one_dibs_mtl_step_changes_every_parameter_without_nan(root) -> None:
    torch.manual_seed(3)
    suite = make_qm9_suite(test_size=8, val_size=8)
    model = suite.make_model()
    train = suite.datasets(str(root), "train")
    inputs, targets = suite.collate([train[i] for i in range(12)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = suite.task_losses(model(inputs), targets)
    optimizer.zero_grad()
    heads = model.task_parameters()
    info = core.mtl_backward(
        [losses[name] for name in TASKS],
        model.shared_parameters(),
        core.DiBSMTL(),
        task_params=[heads[name] for name in TASKS],
    )
    optimizer.step()
    assert torch.isfinite(info.weights).all() and info.weights.shape == (11,)
    for old, new in zip(before, model.parameters()):
        assert torch.isfinite(new).all() and not torch.equal(old, new)
    accumulator = suite.make_accumulator()
    with torch.no_grad():
        accumulator.update(model(inputs), targets)
    assert all(value >= 0 and value == value for value in accumulator.compute().values())


# --------------------------------------------------------------------------- data parallel (--nproc)


def test_a_slice_of_a_batch_is_the_batch_of_those_molecules(root) -> None:
    graphs = _graphs(root, 7)
    whole = batch_molecules(graphs)
    for start, stop in [(0, 3), (3, 7), (2, 3), (0, 7)]:
        part, expected = whole.slice_samples(start, stop), batch_molecules(graphs[start:stop])
        for field in ("x", "edge_index", "edge_attr", "batch"):
            assert torch.equal(getattr(part, field), getattr(expected, field)), field
        assert part.num_graphs == expected.num_graphs == part.num_samples
    with pytest.raises(core.errors.MTLInputError, match="cannot take molecules"):
        whole.slice_samples(5, 9)


def test_shards_of_a_qm9_batch_average_to_the_whole_batch(root) -> None:
    """What `--nproc` relies on: over the ranks' shards (uneven here, 12 molecules on 5 ranks), the
    mean of the scaled losses and of their gradients is the whole batch's, so the engine's mean
    all-reduce reproduces the one-process step."""
    from benchmarks.harness.parallel import DataParallel

    torch.manual_seed(4)
    suite = make_qm9_suite(test_size=8, val_size=8)
    model = suite.make_model().double()
    train = suite.datasets(str(root), "train")
    inputs, targets = suite.collate([train[i] for i in range(12)])
    inputs = MoleculeBatch(
        inputs.x.double(),
        inputs.edge_index,
        inputs.edge_attr.double(),
        inputs.batch,
        inputs.num_graphs,
    )
    targets = {name: value.double() for name, value in targets.items()}

    def loss_and_grad(batch, share=1.0):
        losses = suite.task_losses(model(batch[0]), batch[1])
        total = sum(
            losses[name] * share * (i + 1) for i, name in enumerate(TASKS)
        )  # every task counts
        return total.detach(), torch.autograd.grad(total, list(model.parameters()))

    whole_loss, whole_grad = loss_and_grad((inputs, targets))
    world = 5
    shards = [DataParallel(rank, world, None).shard((inputs, targets)) for rank in range(world)]
    assert sum(batch[0].num_graphs for batch, _ in shards) == 12
    parts = [loss_and_grad(batch, share) for batch, share in shards]
    torch.testing.assert_close(
        sum(loss for loss, _ in parts) / world, whole_loss, rtol=1e-12, atol=0
    )
    for index, expected in enumerate(whole_grad):
        torch.testing.assert_close(
            sum(grad[index] for _, grad in parts) / world, expected, rtol=1e-9, atol=1e-12
        )
