"""Data-parallel training over MPI (sppcaffe/parallel): real `mpiexec -n 2`
runs of tools/train_net on tiny nets, against one process.

- 2 ranks x batch 4 train as 1 process x batch 8 (SGD with momentum,
  HDF5Data shuffled over two files), and with Adam and iter_size 2
  (ImageData shuffled), weights within 1e-6 relative;
- a 2-rank run resumed from its snapshot ends bit for bit where the
  uninterrupted one does (random crops and mirrors per rank, Dropout,
  prefetch threads);
- an error raised on rank 1 ends both ranks with its message and a
  non-zero exit; SIGINT on rank 1 alone stops both after the same
  iteration, with a snapshot;
- without mpiexec nothing imports mpi4py.

Skipped, saying why, where mpi4py or mpiexec is missing (pip install
'sppcaffe[mpi]')."""
import os
import re
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from sppcaffe import io
from sppcaffe.solvers import state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net")


def mpi_ready():
    """Why MPI tests cannot run here, or None."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'sppcaffe[mpi]')"
    if shutil.which("mpiexec") is None:
        return "no mpiexec on PATH (pip install mpich)"
    return None


pytestmark = pytest.mark.skipif(mpi_ready() is not None, reason=str(mpi_ready()))


def environment(**extra):
    """One BLAS thread per process (two ranks share the two cores, and
    results must not depend on the thread count), no launcher variables
    of an enclosing MPI job."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])))
    env.update(extra)
    return env


def run(ranks, program, *args, timeout=120, env=None):
    """Run `program args` in 1 process (ranks=None) or under mpiexec -n
    ranks; the CompletedProcess (text)."""
    command = [sys.executable, program, *map(str, args)]
    if ranks is not None:
        command = ["mpiexec", "-n", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env or environment(), cwd=ROOT)


def weights(path):
    """{layer: [arrays]} of a .caffemodel."""
    net = io.read_weights(str(path))
    return {layer.name: [io.blob_to_array(b) for b in layer.blobs]
            for layer in net.layer if layer.blobs}


def history(state_path, model, sets=1):
    """The solver state's history arrays (`sets` per param: Adam's 2)."""
    shapes = [a.shape for blobs in weights(model).values() for a in blobs]
    return state.read_state(str(state_path), shapes * sets).history


def assert_close(one, two, rtol=1e-6):
    """Every blob of `two` within `rtol` of `one`, relative to the blob's norm."""
    assert one.keys() == two.keys()
    for name in one:
        for a, b in zip(one[name], two[name]):
            assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(a), name


def losses(stderr):
    return [float(x) for x in re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", stderr)]


# ---------------------------------------------------------------------------
# Data and nets
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 rows in two HDF5 files, and 20 images of 8x8 pixels with their list."""
    folder = tmp_path_factory.mktemp("mpi_data")
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((40, 3, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 40).astype(np.float32)
    for name, part in (("a", slice(0, 24)), ("b", slice(24, None))):
        with h5py.File(folder / f"{name}.h5", "w") as f:
            f["data"], f["label"] = rows[part], labels[part]
    (folder / "h5.txt").write_text(f"{folder}/a.h5\n{folder}/b.h5\n")
    with open(folder / "list.txt", "w") as f:
        for i in range(20):
            cv2.imwrite(str(folder / f"im{i}.png"),
                        rng.integers(0, 256, (8 + i % 3, 9, 3), dtype=np.uint8))
            f.write(f"im{i}.png {i % 3}\n")
    return folder


TRUNK = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv" top: "fc1"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.1 } } }
%s
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc2" bottom: "label" top: "acc" }
"""
DROPOUT = ('layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" '
           'dropout_param { dropout_ratio: 0.5 } }')


def hdf5_layer(folder, batch):
    return (f'layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{folder}/h5.txt" batch_size: {batch} shuffle: true }} }}')


def image_layer(folder, batch, transform="", phase=""):
    return (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" {phase} '
            f"transform_param {{ {transform} }} "
            f'image_data_param {{ source: "{folder}/list.txt" root_folder: "{folder}/" '
            f"batch_size: {batch} shuffle: true new_height: 8 new_width: 8 }} }}")


def write_solver(folder, name, net_text, **fields):
    """A solver file (and its net file) in `folder`; snapshots in folder/name/."""
    (folder / f"{name}.prototxt").write_text(f'name: "{name}"\n{net_text}')
    settings = dict(base_lr=0.1, lr_policy='"fixed"', max_iter=10, display=1, random_seed=5,
                    snapshot_after_train="true", snapshot_prefix=f'"{folder}/{name}/s"')
    settings.update(fields)
    text = "".join(f"{key}: {value}\n" for key, value in settings.items())
    path = folder / f"{name}_solver.prototxt"
    path.write_text(f'net: "{folder}/{name}.prototxt"\nsolver_mode: CPU\n{text}')
    return path


def train(ranks, solver, *args, **kwargs):
    result = run(ranks, TRAIN_NET, "--solver", solver, "--no-plot", *args, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights differ" not in result.stderr
    return result


# ---------------------------------------------------------------------------
# Same training as one process with the whole batch
# ---------------------------------------------------------------------------
def test_two_ranks_sgd_equal_one_process_with_twice_the_batch(tmp_path, data):
    one = write_solver(tmp_path, "one", hdf5_layer(data, 8) + TRUNK % "", momentum=0.9)
    two = write_solver(tmp_path, "two", hdf5_layer(data, 4) + TRUNK % "", momentum=0.9)
    single = train(None, one)
    parallel = train(2, two)
    assert_close(weights(tmp_path / "one/s_iter_10.caffemodel"),
                 weights(tmp_path / "two/s_iter_10.caffemodel"))
    # The logged loss is the mean of the ranks': the whole batch's.
    np.testing.assert_allclose(losses(parallel.stderr), losses(single.stderr), rtol=1e-5)
    assert len(losses(parallel.stderr)) == 10
    assert "Data-parallel training over 2 ranks" in parallel.stderr
    assert "[rank 1]" not in parallel.stderr        # rank 1 logs warnings only


def test_two_ranks_adam_iter_size_2_equal_one_process(tmp_path, data):
    fields = dict(type='"Adam"', base_lr=0.01, momentum=0.9, momentum2=0.999, iter_size=2)
    one = write_solver(tmp_path, "one", image_layer(data, 8) + TRUNK % "", **fields)
    two = write_solver(tmp_path, "two", image_layer(data, 4) + TRUNK % "", **fields)
    train(None, one)
    train(2, two)
    assert_close(weights(tmp_path / "one/s_iter_10.caffemodel"),
                 weights(tmp_path / "two/s_iter_10.caffemodel"))
    # Adam's two moments too (blob by blob, relative to the blob's norm).
    moments = [dict(enumerate(history(tmp_path / f"{name}/s_iter_10.solverstate",
                                      tmp_path / f"{name}/s_iter_10.caffemodel", sets=2)))
               for name in ("one", "two")]
    assert_close({k: [v] for k, v in moments[0].items()},
                 {k: [v] for k, v in moments[1].items()}, rtol=1e-5)


def test_gpu_ranks_reduce_through_host_buffers(tmp_path, data):
    """--gpu all: a device per local rank (here the CUDA kernels built for
    the CPU, SPPCAFFE_GPU=host), gradients through host buffers: the same
    training as one CPU process with the whole batch."""
    one = write_solver(tmp_path, "one", hdf5_layer(data, 8) + TRUNK % "", momentum=0.9)
    two = write_solver(tmp_path, "two", hdf5_layer(data, 4) + TRUNK % "", momentum=0.9)
    train(None, one)
    result = train(2, two, "--gpu", "all", env=environment(SPPCAFFE_GPU="host"))
    assert "Use GPU with device ID 0" in result.stderr
    assert_close(weights(tmp_path / "one/s_iter_10.caffemodel"),
                 weights(tmp_path / "two/s_iter_10.caffemodel"))


# ---------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------
def test_two_rank_resume_is_bit_exact(tmp_path, data):
    """Random crops and mirrors (each rank its own), Dropout, shuffling,
    prefetching, and a test net on rank 0: the resumed run's weights,
    history and test scores are the uninterrupted run's, bit for bit."""
    net = (image_layer(data, 3, "crop_size: 6 mirror: true", "include { phase: TRAIN }")
           + image_layer(data, 4, "crop_size: 6", "include { phase: TEST }")
           + TRUNK % DROPOUT)
    fields = dict(momentum=0.9, snapshot=5, test_iter=2, test_interval=5)
    straight = write_solver(tmp_path, "straight", net, **fields)
    first = train(2, straight)
    resumed = write_solver(tmp_path, "resumed", net, **fields)
    os.makedirs(tmp_path / "resumed")
    for suffix in (".caffemodel", ".solverstate", ".solverstate.rng"):
        shutil.copy(tmp_path / f"straight/s_iter_5{suffix}", tmp_path / f"resumed/s_iter_5{suffix}")
    second = train(2, resumed, "--snapshot", tmp_path / "resumed/s_iter_5.solverstate")
    a, b = (weights(tmp_path / f"{name}/s_iter_10.caffemodel") for name in ("straight", "resumed"))
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            assert np.array_equal(x, y), layer
    for x, y in zip(history(tmp_path / "straight/s_iter_10.solverstate",
                            tmp_path / "straight/s_iter_10.caffemodel"),
                    history(tmp_path / "resumed/s_iter_10.solverstate",
                            tmp_path / "resumed/s_iter_10.caffemodel")):
        assert np.array_equal(x, y)

    def scores(result):
        return re.findall(r"Test net output #\d+: (.*)", result.stderr)[-2:]
    assert scores(second) == scores(first) and scores(first)
    assert "warn" not in second.stderr.lower()


# ---------------------------------------------------------------------------
# Errors and signals on one rank
# ---------------------------------------------------------------------------
PYTHON_LAYER = '''
import os
import signal

import sppcaffe


class OnRankOne(sppcaffe.Layer):
    """Passes its bottom through; on rank 1, at forward pass 3, does what
    param_str says: raise an error, or send itself SIGINT."""
    def setup(self, bottom, top):
        self.passes = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        self.passes += 1
        if os.environ.get("PMI_RANK") == "1" and self.passes == 3:
            if self.param_str == "raise":
                raise ValueError("boom on rank 1 at forward pass 3")
            os.kill(os.getpid(), signal.SIGINT)

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


def python_layer_solver(tmp_path, data, what):
    (tmp_path / "on_rank_one.py").write_text(PYTHON_LAYER)
    layer = ('layer { name: "probe" type: "Python" bottom: "fc1" top: "probe" python_param { '
             f'module: "on_rank_one" layer: "OnRankOne" param_str: "{what}" }} }}')
    net = hdf5_layer(data, 4) + (TRUNK % layer).replace('bottom: "fc1" top: "fc2"',
                                                          'bottom: "probe" top: "fc2"')
    return write_solver(tmp_path, what, net, max_iter=8)


def test_an_error_on_rank_1_ends_both_ranks_with_its_message(tmp_path, data):
    solver = python_layer_solver(tmp_path, data, "raise")
    env = environment(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    result = run(2, TRAIN_NET, "--solver", solver, "--no-plot", env=env, timeout=60)
    assert result.returncode != 0
    assert "boom on rank 1 at forward pass 3" in result.stderr
    assert "Optimization Done" not in result.stderr


def test_sigint_on_rank_1_alone_stops_both_after_the_same_iteration(tmp_path, data):
    solver = python_layer_solver(tmp_path, data, "signal")
    env = environment(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    result = run(2, TRAIN_NET, "--solver", solver, "--no-plot", env=env, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Optimization stopped early" in result.stderr
    # Rank 1 got the signal in iteration 2 (its third forward pass): both ranks
    # stop after it, and the snapshot is rank 0's of iteration 3.
    assert sorted(os.listdir(tmp_path / "signal")) == [
        "s_iter_3.caffemodel", "s_iter_3.solverstate", "s_iter_3.solverstate.rng"]


def test_no_mpi_without_a_launcher():
    code = ("import sys, sppcaffe.cli.train_net, sppcaffe.parallel as p; "
            "assert p.world() is None; assert 'mpi4py' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environment(), cwd=ROOT, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
