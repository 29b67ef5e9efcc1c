"""Who reads what under MPI, without MPI (sppcaffe/parallel/sharding.py and
the launcher checks of sppcaffe/parallel): N sharded readers of batch B
together read, iteration by iteration, exactly the items of one reader of
batch N*B, across epoch ends and reshuffles; their states resume exactly,
and a state of another layout resumes at the same point of the data;
--gpu values map to one device per local rank."""
import cv2
import h5py
import numpy as np
import pytest

import sppcaffe
from sppcaffe import io, parallel
from sppcaffe.data.db_batches import DBBatchReader
from sppcaffe.data.hdf5_batches import HDF5BatchReader
from sppcaffe.data.image_list import ImageListBatchReader
from sppcaffe.data.window_file import WindowBatchReader
from sppcaffe.data import LMDBWriter, array_to_datum
from sppcaffe.parallel.sharding import ShardedReader, current_shard, data_shard, split
from sppcaffe.proto import caffe_pb2

ITEMS = 11          # not a multiple of any batch: epochs end inside batches


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same ITEMS items (labels 0..ITEMS-1) as an image list, an LMDB
    and two HDF5 files, and a window file."""
    folder = tmp_path_factory.mktemp("shard_sources")
    rng = np.random.default_rng(0)
    with open(folder / "list.txt", "w") as f, LMDBWriter(str(folder / "lmdb")) as db:
        for i in range(ITEMS):
            image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"im{i}.png"), image)
            f.write(f"im{i}.png {i}\n")
            db.put(f"{i:08d}", array_to_datum(image.transpose(2, 0, 1), i).SerializeToString())
    for name, part in (("a", range(0, 4)), ("b", range(4, ITEMS))):
        with h5py.File(folder / f"{name}.h5", "w") as f:
            f["data"] = np.zeros((len(part), 2), np.float32)
            f["label"] = np.asarray(part, np.float32)
    (folder / "h5.txt").write_text(f"{folder}/a.h5\n{folder}/b.h5\n")
    (folder / "windows.txt").write_text(
        "# 0\nim0.png\n3\n6\n7\n2\n1 0.9 0 0 5 4\n0 0.1 1 1 4 4\n")
    return folder


def layer(kind, folder, batch):
    text = {
        "ImageData": f'type: "ImageData" image_data_param {{ source: "{folder}/list.txt" '
                     f'root_folder: "{folder}/" batch_size: {batch} shuffle: true }}',
        # (One reader draws its shuffles and its mirrors from one generator, so
        # with both its order differs from the ranks': mirrors are left out.)
        "Data": f'type: "Data" data_param {{ source: "{folder}/lmdb" backend: LMDB '
                f"batch_size: {batch} }} transform_param {{ crop_size: 4 mirror: true }}",
        "HDF5Data": f'type: "HDF5Data" hdf5_data_param {{ source: "{folder}/h5.txt" '
                    f"batch_size: {batch} shuffle: true }}",
        "WindowData": f'type: "WindowData" window_data_param {{ source: "{folder}/windows.txt" '
                      f'root_folder: "{folder}/" batch_size: {batch} fg_fraction: 0.5 }} '
                      "transform_param { crop_size: 4 mirror: true }",
    }[kind]
    return io.parse_text(f'name: "data" top: "data" top: "label" {text}',
                         caffe_pb2.LayerParameter())


def reader(kind, folder, batch, seed=3):
    sppcaffe.set_random_seed(seed)          # the ranks agree on the seed
    param = layer(kind, folder, batch)
    if kind == "HDF5Data":
        return HDF5BatchReader(param, caffe_pb2.TRAIN, ["data", "label"])
    classes = {"ImageData": ImageListBatchReader, "Data": DBBatchReader}
    return classes[kind](param, caffe_pb2.TRAIN, 2)


def labels(batch):
    return batch.arrays[1].astype(int).tolist()


@pytest.mark.parametrize("kind", ["ImageData", "Data", "HDF5Data"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_together_read_the_whole_batch_of_one_reader(sources, kind, ranks):
    batch = 2
    whole = reader(kind, sources, ranks * batch)
    shards = [ShardedReader(reader(kind, sources, batch), r, ranks) for r in range(ranks)]
    for _ in range(7):              # several epochs, reshuffled
        expected = labels(whole.next_batch())
        got = [label for shard in shards for label in labels(shard.next_batch())]
        assert got == expected


def test_ranks_crop_and_mirror_with_their_own_generators(sources):
    one, two = (ShardedReader(reader("Data", sources, 2), r, 2) for r in (0, 1))
    assert one.item_rng is not None
    assert one.item_rng.integers(2 ** 62) != two.item_rng.integers(2 ** 62)


@pytest.mark.parametrize("kind", ["ImageData", "Data", "HDF5Data", "WindowData"])
def test_a_shard_state_resumes_exactly(sources, kind):
    def make():
        if kind == "WindowData":
            sppcaffe.set_random_seed(3)
            return ShardedReader(WindowBatchReader(layer(kind, sources, 2), caffe_pb2.TRAIN, 2),
                                 1, 2)
        return ShardedReader(reader(kind, sources, 2), 1, 2)
    first = make()
    for _ in range(3):
        first.next_batch()
    saved = first.state()
    assert saved["shard"] == {"rank": 1, "size": 2, "batch": 2}
    expected = [first.next_batch().arrays for _ in range(4)]
    second = make()
    second.restore(saved)
    for arrays in expected:
        for a, b in zip(arrays, second.next_batch().arrays):
            np.testing.assert_array_equal(a, b)


def test_a_state_of_another_layout_resumes_at_the_same_point_of_the_data(sources):
    """One process read 3 batches of 4; then 2 ranks of batch 2 go on from
    there: together they read what the one process reads next."""
    single = reader("HDF5Data", sources, 4)
    for _ in range(3):
        single.next_batch()
    saved = single.state()
    expected = [labels(single.next_batch()) for _ in range(3)]
    shards = [ShardedReader(reader("HDF5Data", sources, 2), r, 2) for r in (0, 1)]
    for shard in shards:
        shard.restore(saved)
    for batch in expected:
        assert [x for shard in shards for x in labels(shard.next_batch())] == batch


def test_the_shard_block_applies_to_its_phases():
    assert current_shard(caffe_pb2.TRAIN) is None
    with data_shard(1, 2):
        assert current_shard(caffe_pb2.TRAIN).rank == 1
        assert current_shard(caffe_pb2.TEST) is None
    with data_shard(0, 1):
        assert current_shard(caffe_pb2.TRAIN) is None     # one rank: nothing to split
    assert split(range(7), 1, 3) == [1, 4]


# ---------------------------------------------------------------------------
# Launchers and GPUs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("env, size", [
    ({}, None), ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4), ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),
    ({"PMIX_RANK": "0"}, 0), ({"SPPCAFFE_MPI": "1"}, 0),
    ({"PMI_SIZE": "4", "SPPCAFFE_MPI": "0"}, None), ({"PMI_SIZE": "1"}, 1)])
def test_launched_size_reads_the_launchers_environment(monkeypatch, env, size):
    for name in parallel.SIZE_VARIABLES + parallel.RANK_VARIABLES + ("SPPCAFFE_MPI",):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parallel.launched_size() == size


class FakeComm:
    def __init__(self, local_rank, local_size):
        self.local_rank, self.local_size, self.is_root = local_rank, local_size, local_rank == 0


@pytest.mark.parametrize("value, local, expected", [
    ("all", (1, 4), "1"), ("3,5", (1, 2), "5"), ("2", (0, 1), "2"), (None, (1, 2), None)])
def test_gpu_per_local_rank(monkeypatch, value, local, expected):
    monkeypatch.setitem(parallel._world, "comm", FakeComm(*local))
    assert parallel.rank_gpu(value) == expected
    assert parallel.consecutive_gpus(2) == ",".join(str(2 + i) for i in range(local[1]))


def test_one_gpu_id_for_several_local_ranks_is_an_error(monkeypatch):
    monkeypatch.setitem(parallel._world, "comm", FakeComm(0, 2))
    with pytest.raises(parallel.ParallelError, match="give one id per local rank"):
        parallel.rank_gpu("0")
