"""The fuzzed corpus of test_fuzz_readers.py: seed files, mutations, the
readers they are fed to, and the property every outcome must have.

The property: reading a mutated or truncated file ends in

* a correct result (checked against what the file says where that can be
  told), or
* a *clear error*: an exception class of sppcaffe's own that is a
  ValueError (PrototxtError, CaffemodelError, DataError, LayerError,
  SolverError, SolverStateError, ...: what the tools print as
  `tool: error: ...`), or an OSError, whose message (with its notes) names
  the file read;

never another exception (a traceback for the user), a hang or a crash.

Hangs and crashes cannot be caught in the process that has them, so the
readers run in a worker process (`python fuzz_corpus.py WORKDIR`): the
test sends it `{"target": ..., "examples": N, "seed": ...}` lines and reads
one JSON reply per line; a worker that dies (a C-level crash in a
decoder) or stops answering (a hang) is reported with the example it was
running, which it writes to WORKDIR/<target>.current before each one.
Each example also runs under an alarm, so a Python-level hang fails with
its own traceback.

Mutations are drawn by Hypothesis as lists of edits to a seed (flip,
delete, insert bytes or tokens, duplicate a span, truncate), so a failure
shrinks to the fewest edits that still break the reader.
"""
import contextlib
import io as text_io
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback

import cv2
import numpy as np
from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings
from hypothesis import strategies as st

EXAMPLE_SECONDS = 20          # an example running longer than this is a hang
MEMORY_HEADROOM = 3 << 30     # bytes the worker may allocate beyond its start-up size


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------
NET = """name: "fuzz"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "label" type: "DummyData" top: "label"
        dummy_data_param { shape { dim: 2 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1
                            weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "spp" type: "SPP" bottom: "pool" top: "spp"
        spp_param { pool: MAX method: ADAPTIVE levels: 2 levels: 1 } }
layer { name: "drop" type: "Dropout" bottom: "spp" top: "spp" dropout_param { dropout_ratio: 0.5 }
        include { phase: TRAIN } }
layer { name: "ip" type: "InnerProduct" bottom: "spp" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""

# The same kind of net in the V1 form (`layers`, enum types), which is upgraded on reading.
NET_V1 = """name: "fuzz_v1"
input: "data" input_dim: 2 input_dim: 3 input_dim: 6 input_dim: 6
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip"
         inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" }
"""

# A solver with its net inline (a mutation cannot send it to another file).
DUMMY_DATA = """layer { name: "data" type: "DummyData" top: "data" top: "label"
          dummy_data_param { shape { dim: 2 dim: 5 } shape { dim: 2 }
                             data_filler { type: "gaussian" }
                             data_filler { type: "constant" } } }"""
# The solver whose snapshots seed the solver state and .rng targets reads images
# (shuffled), so that its sidecar holds a data layer's position too.
IMAGE_DATA = """layer { name: "data" type: "ImageData" top: "data" top: "label"
          data_param { prefetch: 0 }
          image_data_param { source: "{list}" root_folder: "{root}" batch_size: 2 shuffle: true
                             new_height: 4 new_width: 4 } }"""
SOLVER = """net_param {
  name: "fuzz_solver_net"
  DATA
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
}
test_iter: 1
test_interval: 10
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 100
momentum: 0.9
weight_decay: 0.0005
max_iter: 20
display: 0
type: "Nesterov"
iter_size: 1
clip_gradients: 10
random_seed: 3
"""

SOLVER_TOKENS = [b"base_lr: -1", b"momentum: 1.5", b"max_iter: 0", b"type: \"Adam\"",
                 b"solver_type: ADAGRAD", b"lr_policy: \"multistep\"", b"stepvalue: 5",
                 b"test_iter: 2", b"iter_size: 0", b"average_loss: 0", b"test_state { }",
                 b"train_net_param { }", b"net: \"x.prototxt\"", b"snapshot: 1"]

TEXT_TOKENS = [b"{", b"}", b":", b"\"", b"#", b"\n", b" ", b"layer {", b"layers {", b"top: \"t\"",
               b"bottom: \"data\"", b"bottom: \"nowhere\"", b"name: \"ip\"", b"type: \"Pooling\"",
               b"type: \"Nope\"", b"num_output: 0", b"kernel_size: 9", b"dim: 0", b"dim: -1",
               b"levels: 0", b"stride: 0", b"pad: 5", b"0", b"1", b"-1", b"99", b"1e40", b"nan",
               b"inf", b"2147483648", b"0x10", b"\\", b"\xff", b"\x00", b"\xc3\xa9", b"phase: TEST",
               b"include { phase: TRAIN }", b"propagate_down: true", b"loss_weight: 2",
               b"param { name: \"shared\" }", b"input_dim: 0", b"engine: CUDNN"]

BINARY_TOKENS = [b"\x00", b"\x80", b"\xff\xff\xff\xff\x0f", b"\xff" * 10, b"\x08\x01", b"\x0a\x05",
                 b"\x12\x00", b"\x3a\x7f", b"\x2a\x04\x00\x00\x80\x3f", b"\x0d\x00\x00\xc0\x7f"]


def make_seeds(work):
    """Write the seed files and their companions (images, weights) into
    `work`; return {seed name: bytes}."""
    import sppcaffe
    from sppcaffe import io
    from sppcaffe.data import array_to_datum, encoded_datum
    from sppcaffe.proto import caffe_pb2

    seeds = {"net": NET.encode(), "net_v1": NET_V1.encode(),
             "solver": SOLVER.replace("DATA", DUMMY_DATA).encode()}
    rng = np.random.default_rng(0)
    # Weights of the net, modern and V1.
    net = sppcaffe.Net(write(work, "net_seed.prototxt", seeds["net"]), sppcaffe.TEST)
    net.save(os.path.join(work, "net_seed.caffemodel"))
    seeds["caffemodel"] = read(work, "net_seed.caffemodel")
    v1 = caffe_pb2.NetParameter(name="fuzz_v1")
    for name, kind, shapes in (("conv", caffe_pb2.V1LayerParameter.CONVOLUTION,
                                [(4, 3, 3, 3), (4,)]),
                               ("ip", caffe_pb2.V1LayerParameter.INNER_PRODUCT, [(3, 64), (3,)])):
        layer = v1.layers.add(name=name, type=kind)
        for shape in shapes:
            io.array_to_blob(rng.standard_normal(shape).astype(np.float32), layer.blobs.add())
    seeds["caffemodel_v1"] = v1.SerializeToString()
    # Images: a list of them, and the images' own bytes.
    os.makedirs(os.path.join(work, "images", "sub dir"), exist_ok=True)
    for name, shape in (("a.png", (6, 6, 3)), ("b.jpg", (7, 4, 3)), ("sub dir/c.png", (6, 6))):
        cv2.imwrite(os.path.join(work, "images", name),
                    rng.integers(0, 256, shape, dtype=np.uint8))
    seeds["image_list"] = b"a.png 0\nb.jpg 1\nsub dir/c.png 2\n"
    seeds["png"] = read(work, "images/a.png")
    seeds["jpeg"] = read(work, "images/b.jpg")
    # A solver state (with its weights file and sidecar) of a solver reading images.
    images = IMAGE_DATA.replace("{list}", write(work, "image_seed_list.txt", seeds["image_list"]))
    images = images.replace("{root}", os.path.join(work, "images") + os.sep)
    solver = sppcaffe.get_solver(write(work, "solver_seed.prototxt",
                                       SOLVER.replace("DATA", images).encode()))
    solver.step(3)
    model, state = solver.snapshot()
    seeds["solverstate"] = read(work, state)
    seeds["rng_sidecar"] = read(work, state + ".rng")
    # A mean file.
    mean = io.array_to_blob(rng.uniform(0, 255, (1, 3, 5, 5)).astype(np.float32))
    seeds["binaryproto"] = mean.SerializeToString()
    # Datum values: raw bytes, float_data, an encoded PNG.
    raw = array_to_datum(rng.integers(0, 256, (3, 6, 6), dtype=np.uint8), label=2)
    floats = array_to_datum(rng.standard_normal((1, 6, 6)).astype(np.float32), label=1)
    seeds["datum_raw"] = raw.SerializeToString()
    seeds["datum_float"] = floats.SerializeToString()
    seeds["datum_encoded"] = encoded_datum(seeds["png"], label=4).SerializeToString()
    # A window file (R-CNN's WindowData source) over the images.
    seeds["window_file"] = (b"# 0\nimages/a.png\n3\n6\n6\n2\n1 0.9 0 0 4 3\n0 0.1 1 1 5 4\n"
                            b"# 1\nimages/b.jpg\n3\n7\n4\n1\n2 0.6 0 0 3 6\n")
    return seeds


def write(work, name, data):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read(work, name):
    with open(os.path.join(work, name), "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------
def _edit(tokens):
    position = st.integers(0, 1 << 16)
    return st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 255)),
        st.tuples(st.just("delete"), position, st.integers(1, 24)),
        st.tuples(st.just("insert"), position,
                  st.sampled_from(tokens) | st.binary(min_size=1, max_size=6)),
        st.tuples(st.just("duplicate"), position, st.integers(1, 48), position),
        st.tuples(st.just("truncate"), position),
    )


def apply_edits(seed, edits):
    data = bytearray(seed)
    for edit in edits:
        kind, at = edit[0], edit[1] % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] = edit[2]
        elif kind == "delete":
            del data[at:at + edit[2]]
        elif kind == "insert":
            data[at:at] = edit[2]
        elif kind == "duplicate":
            span = bytes(data[at:at + edit[2]])
            where = edit[3] % (len(data) + 1)
            data[where:where] = span
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


def mutated(seeds, tokens):
    """Bytes made from one of `seeds` by 1 to 6 edits."""
    return st.builds(apply_edits, st.sampled_from(seeds),
                     st.lists(_edit(tokens), min_size=1, max_size=6))


# ---------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------
class Hang(BaseException):
    """An example ran past EXAMPLE_SECONDS (BaseException: no reader's
    `except Exception` can swallow it)."""


def is_clear_error(err, names):
    """Whether `err` is what the module docstring calls a clear error about
    one of the files `names`."""
    ours = isinstance(err, ValueError) and type(err).__module__.startswith("sppcaffe")
    if not (ours or isinstance(err, OSError)):
        return False
    text = "\n".join([str(err)] + list(getattr(err, "__notes__", [])))
    return any(os.fspath(name) in text for name in names)


def outcome(call, names):
    """call()'s result, or None when it raised a clear error about one of
    `names`; anything else fails the example (AssertionError)."""
    try:
        return call()
    except Exception as err:
        if is_clear_error(err, names):
            return None
        raise AssertionError(f"not a clear error naming {list(map(str, names))}: "
                             f"{type(err).__module__}.{type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------
# Targets: (seed names, edit tokens, check(data, work))
# ---------------------------------------------------------------------------
def check_net(data, work):
    import sppcaffe
    path = write(work, "fuzzed.prototxt", data)
    for phase in (sppcaffe.TRAIN, sppcaffe.TEST):
        outcome(lambda: sppcaffe.Net(path, phase), [path])


def check_solver(data, work):
    import sppcaffe
    path = write(work, "fuzzed_solver.prototxt", data)
    outcome(lambda: sppcaffe.get_solver(path), [path])


_BUILT = {}


def _seed_net(work):
    """The seed net (TEST phase), built once and reused."""
    import sppcaffe
    if "net" not in _BUILT:
        _BUILT["net"] = sppcaffe.Net(os.path.join(work, "net_seed.prototxt"), sppcaffe.TEST)
    return _BUILT["net"]


def check_caffemodel(data, work):
    from sppcaffe import io
    path = write(work, "fuzzed.caffemodel", data)
    net = _seed_net(work)
    if outcome(lambda: net.copy_from(path) or True, [path]) is None:
        return
    # Loaded: every layer of the file that the net has now holds the file's values.
    weights = io.read_weights(path)
    for layer in weights.layer:
        if layer.name in net.layer_dict and len(layer.blobs):
            for blob, target in zip(layer.blobs, net.layer_dict[layer.name].blobs):
                np.testing.assert_array_equal(target.data,
                                              io.blob_to_array(blob, shape=target.shape))


def _seed_solver(work):
    import sppcaffe
    if "solver" not in _BUILT:
        _BUILT["solver"] = sppcaffe.get_solver(os.path.join(work, "solver_seed.prototxt"))
    return _BUILT["solver"]


def check_solverstate(data, work):
    from sppcaffe.proto import caffe_pb2
    path = write(work, "fuzzed.solverstate", data)
    solver = _seed_solver(work)
    model = os.path.join(work, "solver_seed_iter_3.caffemodel")
    if outcome(lambda: solver.restore(path) or True, [path, model]) is None:
        return
    state = caffe_pb2.SolverState.FromString(data)
    assert solver.iter == state.iter


def check_rng_sidecar(data, work):
    state = os.path.join(work, "fuzzed_rng.solverstate")
    shutil.copyfile(os.path.join(work, "solver_seed_iter_3.solverstate"), state)
    path = write(work, "fuzzed_rng.solverstate.rng", data)
    outcome(lambda: _seed_solver(work).restore(state), [path])


def check_binaryproto(data, work):
    from sppcaffe import io
    from sppcaffe.data.transformer import load_mean_image
    path = write(work, "fuzzed.binaryproto", data)
    array = outcome(lambda: io.read_blobproto(path), [path])
    if array is not None:
        assert array.dtype == np.float32
    outcome(lambda: load_mean_image(path), [path])


DATA_NET = """layer {{ name: "data" type: "{kind}" top: "data" top: "label"
  data_param {{ prefetch: 0 {data} }} {param}
  transform_param {{ mirror: true scale: 0.5 {transform} }} }}"""


def _run_data_net(kind, param, names, data="", transform=""):
    """Build a net of one data layer reading the fuzzed source and take
    three batches (the source cycles), each of the batch size asked for."""
    import sppcaffe
    from sppcaffe.io import parse_text
    from sppcaffe.proto import caffe_pb2
    text = DATA_NET.format(kind=kind, data=data, param=param, transform=transform)
    net = outcome(lambda: sppcaffe.Net(parse_text(text, caffe_pb2.NetParameter()),
                                       sppcaffe.TRAIN), names)
    if net is None:
        return
    field = {"Data": "data_param", "ImageData": "image_data_param",
             "WindowData": "window_data_param"}[kind]
    batch_size = getattr(net.layers[0].param, field).batch_size
    try:
        for _ in range(3):
            if outcome(lambda: net.forward(), names) is None:
                return
            shapes = (net.blobs["data"].shape, net.blobs["label"].shape)
            assert shapes[0][0] == shapes[1][0] == batch_size, (shapes, batch_size)
    finally:
        net.close()


def check_datum(data, work):
    from sppcaffe.data import LMDBWriter
    path = os.path.join(work, f"fuzzed_db_{time.monotonic_ns()}")
    with LMDBWriter(path) as writer:
        writer.put("00000000_fuzzed", data)
    try:
        _run_data_net("Data", "", [path], data=f'source: "{path}" backend: LMDB batch_size: 2')
    finally:
        shutil.rmtree(path)


def check_image_list(data, work):
    path = write(work, "fuzzed_list.txt", data)
    root = os.path.join(work, "images") + os.sep
    # A batch of images of different sizes is an error naming them (files the list names).
    _run_data_net("ImageData", f'image_data_param {{ source: "{path}" root_folder: "{root}" '
                  'batch_size: 2 shuffle: true }', [path, root])


def check_image(data, work):
    image = write(work, "images/fuzzed.img", data)
    listing = write(work, "fuzzed_image_list.txt", b"a.png 0\nfuzzed.img 1\n")
    root = os.path.join(work, "images") + os.sep
    _run_data_net("ImageData", f'image_data_param {{ source: "{listing}" root_folder: "{root}" '
                  'batch_size: 1 }', [image])


def check_window_file(data, work):
    path = write(work, "fuzzed_windows.txt", data)
    _run_data_net("WindowData", f'window_data_param {{ source: "{path}" root_folder: "{work}/" '
                  'batch_size: 4 fg_threshold: 0.5 bg_threshold: 0.5 fg_fraction: 0.5 '
                  'context_pad: 1 }', [path], transform="crop_size: 4")


TARGETS = {
    "net_prototxt": (("net", "net_v1"), TEXT_TOKENS, check_net),
    "solver_prototxt": (("solver",), TEXT_TOKENS + SOLVER_TOKENS, check_solver),
    "caffemodel": (("caffemodel", "caffemodel_v1"), BINARY_TOKENS, check_caffemodel),
    "solverstate": (("solverstate",), BINARY_TOKENS, check_solverstate),
    "rng_sidecar": (("rng_sidecar",), TEXT_TOKENS + [b"[", b"]", b"null", b"{}"],
                    check_rng_sidecar),
    "binaryproto": (("binaryproto",), BINARY_TOKENS, check_binaryproto),
    "lmdb_datum": (("datum_raw", "datum_float", "datum_encoded"), BINARY_TOKENS, check_datum),
    "image_list": (("image_list",), TEXT_TOKENS + [b"a.png", b" 7", b"../", b"\t"],
                   check_image_list),
    "image_file": (("png", "jpeg"), BINARY_TOKENS, check_image),
    "window_file": (("window_file",), TEXT_TOKENS + [b"# 2", b"images/b.jpg"], check_window_file),
}


# Checks of the harness itself: each must be reported as a failure.
def _unclear_error(data, work):
    outcome(lambda: {}[data], [])


def _hang(data, work):
    while True:
        time.sleep(0.01)


def _crash(data, work):
    os.kill(os.getpid(), signal.SIGSEGV)


HARNESS_CHECKS = {"harness_unclear_error": (("net",), [b"x"], _unclear_error),
                  "harness_hang": (("net",), [b"x"], _hang),
                  "harness_crash": (("net",), [b"x"], _crash)}


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(seconds):
    def expire(signum, frame):
        raise Hang(f"the example ran for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_target(name, examples, seed, work, seeds, example_seconds=EXAMPLE_SECONDS):
    """Run Hypothesis on target `name`; (passed, report text)."""
    seed_names, tokens, check = {**TARGETS, **HARNESS_CHECKS}[name]
    current = os.path.join(work, f"{name}.current")

    @settings(max_examples=examples, deadline=None, database=None,
              derandomize=seed is None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(mutated([seeds[s] for s in seed_names], tokens))
    def prop(data):
        with open(current, "wb") as f:        # for the parent, should this process die
            f.write(data)
        with time_limit(example_seconds):
            check(data, work)

    if seed is not None:
        prop = hypothesis_seed(seed)(prop)
    report = text_io.StringIO()
    with contextlib.redirect_stdout(report):
        try:
            prop()
        except KeyboardInterrupt:
            raise
        except BaseException as err:        # a Hang (not shrunk by Hypothesis) fails too
            report.write("".join(traceback.format_exception(err)))
            if isinstance(err, Hang):
                with open(current, "rb") as f:
                    report.write(f"\nThe example: {f.read()!r}\n")
            return False, report.getvalue()
    return True, report.getvalue()


def limit_memory():
    """Cap the worker's data segment, so that a mutated size asking for an
    absurd allocation fails (MemoryError: a failed example, named) instead
    of taking the machine's memory."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[5])       # data + stack
    limit = pages * resource.getpagesize() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def main(work):
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                           # stray output must not reach the protocol
    import logging
    logging.getLogger("sppcaffe").setLevel(logging.ERROR)
    os.chdir(work)
    seeds = make_seeds(work)
    limit_memory()
    protocol.write(json.dumps({"ready": True}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        passed, report = run_target(request["target"], request["examples"], request["seed"],
                                    work, seeds, request.get("example_seconds", EXAMPLE_SECONDS))
        protocol.write(json.dumps({"passed": passed, "report": report,
                                   "seconds": time.perf_counter() - start}) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main(sys.argv[1])
