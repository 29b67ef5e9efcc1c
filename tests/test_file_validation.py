"""Every file sppcaffe reads is checked, and a bad one is a clear error
naming it: binary garbage where text is expected (prototxt, solver, image
and window lists, YAML configs, the .rng sidecar), garbage or truncated
binary files (caffemodel, solver state, binaryproto, .npz, HDF5), empty
nets, directories where files are expected, unreadable images; the tools
say `tool: error: ...` without a traceback (issue 11, item 3)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import sppcaffe
from sppcaffe import io
from sppcaffe.cli import config, test_net, time_net, train_net
from sppcaffe.data import (DataError, LMDBWriter, array_to_datum, datum_to_array,
                           read_image_list)
from sppcaffe.data.window_file import read_window_file
from sppcaffe.detection import svm
from sppcaffe.proto import caffe_pb2
from sppcaffe.solvers.state import SolverStateError
from test_train_net import TINY_NET, TINY_SOLVER, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not UTF-8 from the second byte on: what a .caffemodel or an image looks like to a text reader.
GARBAGE = b"C\xbf\x03\xff\xfe binary \x00\x80 data"
# Child processes import sppcaffe from this checkout.
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
NET_ONLY_IN_TRAIN = """name: "train only"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } }
        include { phase: TRAIN } }
"""


@pytest.fixture
def files(tmp_path):
    """A working tiny net, solver and weights, and bad files beside them."""
    net = tmp_path / "tiny.prototxt"
    net.write_text(TINY_NET)
    weights = tmp_path / "tiny.caffemodel"
    sppcaffe.Net(str(net), sppcaffe.TEST).save(str(weights))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(TINY_SOLVER.format(net=net, prefix=tmp_path / "snapshots" / "tiny"))
    (tmp_path / "garbage.bin").write_bytes(GARBAGE)
    (tmp_path / "empty.prototxt").write_bytes(b"")
    (tmp_path / "comments.prototxt").write_text("# a net that was never written\n\n")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "snapshots").mkdir()
    return {name: str(path) for name, path in [
        ("net", net), ("weights", weights), ("solver", solver), ("tmp", tmp_path),
        ("garbage", tmp_path / "garbage.bin"), ("empty", tmp_path / "empty.prototxt"),
        ("comments", tmp_path / "comments.prototxt"), ("folder", tmp_path / "a_folder")]}


def solver_for(files, net_path, name="other_solver.prototxt"):
    path = os.path.join(files["tmp"], name)
    with open(path, "w") as f:
        f.write(TINY_SOLVER.format(net=net_path,
                                   prefix=os.path.join(files["tmp"], "snapshots", "other")))
    return path


def assert_tool_error(code, err, tool, *parts):
    assert code == 1, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    message = err[err.index(f"{tool}: error: "):] if f"{tool}: error: " in err else last
    for part in parts:
        assert part in message, (part, err)


# ---------------------------------------------------------------------------
# Binary garbage where text is expected
# ---------------------------------------------------------------------------
def test_binary_garbage_as_a_prototxt_is_a_prototxt_error_naming_the_file(files):
    for read in (io.read_net, io.read_solver, lambda p: sppcaffe.Net(p, sppcaffe.TEST)):
        with pytest.raises(io.PrototxtError) as caught:
            read(files["garbage"])
        assert f"{files['garbage']}:1: not a text prototxt: byte 0xbf at offset 1" in \
            str(caught.value)


def test_test_net_on_a_binary_model_says_so_without_a_traceback(files, capsys):
    code, err = run_main(test_net, capsys, "--model", files["garbage"], "--weights",
                         files["weights"], "--iterations", "1")
    assert_tool_error(code, err, "test_net", files["garbage"], "not a text prototxt")


def test_train_net_on_a_binary_solver_or_net_says_so_without_a_traceback(files, capsys):
    code, err = run_main(train_net, capsys, "--solver", files["garbage"])
    assert_tool_error(code, err, "train_net", files["garbage"], "not a text prototxt")
    code, err = run_main(train_net, capsys, "--solver", solver_for(files, files["garbage"]))
    assert_tool_error(code, err, "train_net", files["garbage"], "not a text prototxt")


def test_the_installed_tool_prints_one_line_for_a_binary_solver(files):
    """As a user runs it: one `train_net: error:` line, exit status 1."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net"),
                             "--solver", files["garbage"]], capture_output=True, text=True,
                            env=CHILD_ENV, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"train_net: error: {files['garbage']}:1: not a text prototxt")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("read, error, what", [
    (read_image_list, DataError, "image list"),
    (read_window_file, DataError, "window file"),
    (config.load_cfg, config.ConfigError, "config"),
])
def test_binary_garbage_in_text_lists_and_configs_names_the_file(files, read, error, what):
    with pytest.raises(error, match=f"{files['garbage']}:1: not a text {what}: byte 0xbf"):
        read(files["garbage"])


# ---------------------------------------------------------------------------
# Empty nets
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["empty", "comments"])
def test_test_and_time_refuse_an_empty_net(files, capsys, which):
    model = files[which]
    empty = " (the file is empty)" if which == "empty" else ""
    code, err = run_main(test_net, capsys, "--model", model, "--weights", files["weights"],
                         "--iterations", "1")
    assert_tool_error(code, err, "test_net", f"{model}: the net has no layers in phase TEST{empty}")
    code, err = run_main(time_net, capsys, "--model", model, "--iterations", "1")
    assert_tool_error(code, err, "time_net",
                      f"{model}: the net has no layers in phase TRAIN{empty}")


def test_test_net_refuses_a_net_without_layers_in_its_phase(files, capsys):
    model = os.path.join(files["tmp"], "train_only.prototxt")
    with open(model, "w") as f:
        f.write(NET_ONLY_IN_TRAIN)
    code, err = run_main(test_net, capsys, "--model", model, "--weights", files["weights"])
    assert_tool_error(code, err, "test_net", "no layers in phase TEST")


def test_train_net_refuses_an_empty_net_and_writes_nothing(files, capsys):
    solver = solver_for(files, files["empty"])
    code, err = run_main(train_net, capsys, "--solver", solver)
    assert_tool_error(code, err, "train_net",
                      f"the training net ({files['empty']}) has no layers in phase TRAIN")
    assert not os.listdir(os.path.join(files["tmp"], "snapshots"))
    with pytest.raises(sppcaffe.solvers.SolverError, match="has no layers"):
        sppcaffe.get_solver(solver)


# ---------------------------------------------------------------------------
# Directories where files are expected
# ---------------------------------------------------------------------------
def test_a_directory_is_named_as_one(files, capsys):
    folder = files["folder"]
    said = f"'{folder}': it is a directory, not a file"
    cases = [
        (test_net, ["--model", folder, "--weights", files["weights"]], "model"),
        (test_net, ["--model", files["net"], "--weights", folder], "weights"),
        (time_net, ["--model", folder], "model"),
        (train_net, ["--solver", folder], "solver"),
        (train_net, ["--solver", files["solver"], "--weights", folder], "weights"),
        (train_net, ["--solver", files["solver"], "--snapshot", folder], "snapshot"),
        (train_net, ["--solver", files["solver"], "--cfg", folder], "config"),
    ]
    for module, argv, what in cases:
        code, err = run_main(module, capsys, *argv)
        assert_tool_error(code, err, module.PROG, f"cannot read {what} {said}")


def test_a_directory_named_by_a_solver_or_read_as_a_file(files):
    with pytest.raises(IsADirectoryError, match="net file 'a_folder' is a directory"):
        sppcaffe.get_solver(solver_for(files, "a_folder"))
    for read in (io.read_net, io.read_weights, io.read_blobproto):
        with pytest.raises(IsADirectoryError, match=f"'{files['folder']}': it is a directory"):
            read(files["folder"])


# ---------------------------------------------------------------------------
# The .rng sidecar of a solver state
# ---------------------------------------------------------------------------
@pytest.fixture
def snapshot(files):
    """(solver path, state path) after 2 iterations of the tiny solver."""
    solver = sppcaffe.get_solver(files["solver"])
    solver.step(2)
    _, state = solver.snapshot()
    return files["solver"], state


@pytest.mark.parametrize("content, reason", [
    (b'{"format": "sppcaffe-resume-state", "ver', "not a valid resume state"),
    (GARBAGE, "not a text resume state"),
])
def test_a_corrupt_rng_sidecar_is_a_clear_error(snapshot, capsys, content, reason):
    solver_path, state = snapshot
    with open(state + ".rng", "wb") as f:
        f.write(content)
    with pytest.raises(SolverStateError, match=reason) as caught:
        sppcaffe.get_solver(solver_path).restore(state)
    assert state + ".rng" in str(caught.value)
    code, err = run_main(train_net, capsys, "--solver", solver_path, "--snapshot", state,
                         "--iters", "3", "--no-plot")
    assert_tool_error(code, err, "train_net", state + ".rng", reason)


# ---------------------------------------------------------------------------
# Binary files: garbage, truncated, empty
# ---------------------------------------------------------------------------
def test_garbage_and_truncated_binary_files_name_the_file(files, snapshot):
    _, state = snapshot
    tmp = files["tmp"]
    mean = os.path.join(tmp, "mean.binaryproto")
    io.write_blobproto(np.ones((1, 3, 4, 4), np.float32), mean)
    for path, read in ((files["weights"], io.read_weights), (mean, io.read_blobproto),
                       (state, lambda p: sppcaffe.get_solver(files["solver"]).restore(p))):
        with open(path, "rb") as f:
            whole = f.read()
        for content in (GARBAGE, whole[:len(whole) // 2]):
            with open(path, "wb") as f:
                f.write(content)
            with pytest.raises(io.CaffemodelError, match="is not a valid binary") as caught:
                read(path)
            assert path in str(caught.value)


def test_empty_binaryproto_and_solver_state_are_errors(files):
    empty = os.path.join(files["tmp"], "empty.bin")
    open(empty, "wb").close()
    with pytest.raises(io.CaffemodelError, match=f"'{empty}' is empty \\(0 bytes\\): not a "
                                                 "binaryproto"):
        io.read_blobproto(empty)
    with pytest.raises(io.CaffemodelError, match="is empty \\(0 bytes\\): not a solver state"):
        sppcaffe.get_solver(files["solver"]).restore(empty)


def test_a_blob_whose_values_do_not_fill_its_shape_names_the_file(tmp_path):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 2])
    blob.data.extend([1.0, 2.0, 3.0])
    path = str(tmp_path / "short.binaryproto")
    io.write_binary(blob, path)
    with pytest.raises(io.CaffemodelError, match=f"'{path}' holds 3 values but its shape"):
        io.read_blobproto(path)
    blob.shape.dim[0] = -2
    io.write_binary(blob, path)
    with pytest.raises(io.CaffemodelError, match="negative dimension"):
        io.read_blobproto(path)


def test_text_fields_that_are_not_utf8_make_a_binary_file_corrupt(tmp_path):
    """Protobuf hands such a field back as bytes (a resume then died with a
    TypeError joining paths); it is a corrupt file."""
    raw = caffe_pb2.SolverState(iter=3, learned_net="x.caffemodel").SerializeToString()
    path = tmp_path / "bad_text.solverstate"
    path.write_bytes(raw.replace(b"x.caffemodel", b"\xff.caffemodel"))
    with pytest.raises(io.CaffemodelError, match="its learned_net is not UTF-8 text"):
        io.read_binary(str(path), caffe_pb2.SolverState())


def test_garbage_hdf5_state_and_npz_files_name_the_file(files):
    fake = os.path.join(files["tmp"], "fake.solverstate.h5")
    with open(fake, "wb") as f:
        f.write(GARBAGE)
    with pytest.raises(ValueError, match=f"cannot read solver state '{fake}': not a readable "
                                         "HDF5 file"):
        sppcaffe.get_solver(files["solver"]).restore(fake)
    for content in (b"", GARBAGE):
        with open(os.path.join(files["tmp"], "svms.npz"), "wb") as f:
            f.write(content)
        with pytest.raises(ValueError, match="svms.npz: not a readable .npy/.npz SVM file"):
            svm.SVMModel.load(os.path.join(files["tmp"], "svms.npz"))


def test_a_truncated_lmdb_database_is_a_data_error_not_a_crash(tmp_path):
    """LMDB maps data.mdb and dies of SIGBUS on a page past the end of a file
    cut short; the reader says so first.  Run in a child process: the crash
    would take pytest down."""
    db = tmp_path / "db"
    with LMDBWriter(str(db)) as writer:
        for i in range(300):
            writer.put(f"{i:08d}", array_to_datum(np.full((3, 8, 8), i % 256, np.uint8)).
                       SerializeToString())
    with open(db / "data.mdb", "r+b") as f:
        f.truncate(os.path.getsize(db / "data.mdb") // 2)
    script = ("import sys; from sppcaffe.data import DataError, DatumReader\n"
              "try:\n    DatumReader(sys.argv[1])\n"
              "except DataError as err:\n    print(err)")
    result = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True,
                            text=True, env=CHILD_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"cannot open LMDB database '{db}': data.mdb is truncated" in result.stdout


def test_a_datum_whose_dimensions_overflow_is_a_data_error():
    # 2^21 * 2^21 * 2^22 = 2^64: zero in int64 arithmetic, like the empty data.
    datum = caffe_pb2.Datum(channels=1 << 21, height=1 << 21, width=1 << 22)
    with pytest.raises(DataError, match="holds 0 values"):
        datum_to_array(datum, where="datum 'k' of 'db'")


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
def test_an_image_name_that_is_not_utf8_is_read_not_crashed_on(tmp_path):
    """OpenCV's imread crashes (SIGSEGV) on a file name holding a lone
    surrogate, which is how Python spells a name that is not UTF-8 on disk;
    such an image is read.  Run in a child process: the crash would take
    pytest down."""
    folder = os.fsencode(str(tmp_path))
    cv2.imwrite(str(tmp_path / "plain.png"), np.full((3, 5, 3), 7, np.uint8))
    os.rename(str(tmp_path / "plain.png"), os.fsdecode(folder + b"/caf\xe9.png"))
    script = ("import os, sys; from sppcaffe.data.image import read_image; "
              "image = read_image(os.fsdecode(os.fsencode(sys.argv[1]) + b'/caf\\xe9.png')); "
              "print(image.shape)")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                            text=True, env=CHILD_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 5, 3)"


def test_a_name_with_a_nul_byte_reads_no_other_file(tmp_path):
    from sppcaffe.data.image import read_image
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((2, 2, 3), np.uint8))
    assert read_image(str(tmp_path / "a.png") + "\0junk") is None


def test_an_unreadable_image_of_a_list_names_the_list_line_and_image(tmp_path):
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    listing = tmp_path / "list.txt"
    listing.write_text("good.png 0\nbroken.png 1\n")
    net = caffe_pb2.NetParameter()
    io.parse_text(f'''layer {{ name: "data" type: "ImageData" top: "data" top: "label"
        data_param {{ prefetch: 0 }}
        image_data_param {{ source: "{listing}" root_folder: "{tmp_path}/" batch_size: 2 }} }}''',
                  net)
    with pytest.raises(sppcaffe.layer.LayerError) as caught:
        sppcaffe.Net(net, sppcaffe.TRAIN).forward()
    assert f"cannot read image '{tmp_path}/broken.png' (line 2 of '{listing}')" in \
        str(caught.value)


def test_an_unreadable_image_of_a_window_file_names_the_window_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    windows = tmp_path / "windows.txt"
    windows.write_text("# 0\nbroken.jpg\n3\n10\n10\n1\n1 0.9 0 0 5 5\n")
    net = caffe_pb2.NetParameter()
    io.parse_text(f'''layer {{ name: "data" type: "WindowData" top: "data" top: "label"
        data_param {{ prefetch: 0 }} transform_param {{ crop_size: 4 }}
        window_data_param {{ source: "{windows}" root_folder: "{tmp_path}/" batch_size: 1
                             fg_fraction: 1 }} }}''', net)
    with pytest.raises(sppcaffe.layer.LayerError,
                       match=f"cannot decode image '{tmp_path}/broken.jpg' \\(listed in window "
                             f"file '{windows}'\\)"):
        sppcaffe.Net(net, sppcaffe.TRAIN).forward()


# ---------------------------------------------------------------------------
# Classification of errors
# ---------------------------------------------------------------------------
def test_file_errors_are_user_errors_and_a_bug_keeps_its_traceback(files):
    for read in (lambda: io.read_net(files["garbage"]), lambda: io.read_net(files["folder"]),
                 lambda: read_image_list(files["garbage"])):
        with pytest.raises(Exception) as caught:
            read()
        assert train_net.is_user_error(caught.value)
    assert not train_net.is_user_error(KeyError("a bug"))
    assert not train_net.is_user_error(json.JSONDecodeError("a bug", "", 0))
