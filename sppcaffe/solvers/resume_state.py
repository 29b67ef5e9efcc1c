"""What a resumed run needs beyond Caffe's SolverState: the `.rng` sidecar.

Caffe's SolverState holds the iteration, the weights file, the multistep
position and the update history.  An uninterrupted run also depends on
things Caffe never saves: where each data layer stands in its source (the
next record, the shuffled order of this epoch, the epoch count that picks
the multi-size input size), the generators that draw crops, mirrors,
shuffles and windows, and the framework's generator (sppcaffe.random:
Dropout masks, DummyData refills).  A snapshot writes them, as JSON, to
``<state file>.rng`` beside ``<prefix>_iter_N.solverstate[.h5]``;
`Solver.restore` puts them back, which makes training resumed from any
snapshot bit-for-bit equal to an uninterrupted run (every weight, the
history, the test scores).  Caffe ignores the file.

Format, version 2::

    {"format": "sppcaffe-resume-state", "version": 2,
     "random":    <framework generator: numpy BitGenerator.state, e.g.
                   {"bit_generator": "PCG64", "state": {"state": ..., "inc": ...},
                    "has_uint32": 0, "uinteger": 0}>,
     "train_net": [<data layer>, ...],        # the train net's data layers, in net order
     "test_nets": [[<data layer>, ...], ...]} # the same for each test net, in order

    <data layer> = {"layer": name, "type": "ImageData" | "Data" | "HDF5Data" | "WindowData",
                    "epoch": pass of the last batch taken, "size": its multi-size side or null,
                    "reader": <reader>}
    <reader>     = {"type": ..., "rng": <the layer's own generator, as "random">,
                    "sizes": {"sizes": [...], "mode": 0|1, "drawn": [[epoch, size], ...]}
                             (only with transform_param multi_size),
                    ImageData:  "source", "images" (list length), "order" (image indices of
                                this epoch, shuffled or not), "position" (index into order
                                of the next image), "epoch"
                    Data:       "source", "key" (hex of the next record's key), "epoch"
                    HDF5Data:   "source", "files" (list length), "file_order",
                                "current_file" (index into file_order), "row_order"
                                (of the current file), "row" (next index into it), "epoch"
                    WindowData: "source" (windows are drawn with replacement: the
                                generator is the whole position)}

The reader entry is where the batch the NEXT forward takes starts, not
where a prefetch thread has read ahead to (data/prefetch.py).  Test nets'
positions are kept too, so their scores after resuming are those of the
uninterrupted run.  Data layers are matched by name and type, in order;
version 1 (before data positions were saved) is the bare "random" value.

Without the sidecar (a state written by Caffe, or the file lost), resuming
works but logs a warning naming what will differ: the data layers read
from where a new run starts and the framework's generator is not
restored.  A data layer whose source changed (another list length,
database without the saved key, ...) gets the same warning for itself.

A snapshot of a run over N MPI ranks has one more key, "ranks": {"size":
N, "random": [...], "train_net": [[...], ...]}, every rank's generator and
train-net data layers (the top-level entries are rank 0's); see
sppcaffe/parallel/training.py.

What is not captured: state kept by Python layers (their own cursors or
generators) and the smoothed loss of the display, which Caffe also
restarts.
"""
import logging

from ..data.batch import ReaderStateMismatch
from ..random import generator_state, restore_generator_state
from .state import SolverStateError, read_rng_state, rng_path

log = logging.getLogger("sppcaffe")

FORMAT, VERSION = "sppcaffe-resume-state", 2


def _data_layers(net):
    """(layer, its data_state()) for each layer of `net` that reads data."""
    layers = []
    for layer in net.layers:
        state = layer.data_state() if hasattr(layer, "data_state") else None
        if state is not None:
            layers.append((layer, state))
    return layers


def _describe(layer, what):
    return f"layer '{layer.name}' ({layer.type}) of the {what}"


def _nets(solver):
    return [("train net", solver.net)] + [(f"test net #{i}", net)
                                           for i, net in enumerate(solver.test_nets)]


def capture(solver):
    """The sidecar's content for `solver` as it stands now (JSON-ready)."""
    entries = [[{"layer": layer.name, "type": layer.type, **state}
                for layer, state in _data_layers(net)] for _, net in _nets(solver)]
    return {"format": FORMAT, "version": VERSION, "random": generator_state(),
            "train_net": entries[0], "test_nets": entries[1:]}


def _restore_net(net, what, saved):
    """Put `net`'s data layers back where `saved` (a list of entries) has
    them; return the problems, one line per layer left where it was."""
    waiting = {}
    for entry in saved if isinstance(saved, list) else []:
        if isinstance(entry, dict):
            waiting.setdefault((entry.get("layer"), entry.get("type")), []).append(entry)
    problems = []
    for layer, _ in _data_layers(net):
        entries = waiting.get((layer.name, layer.type))
        if not entries:
            problems.append(f"{_describe(layer, what)}: no saved position")
            continue
        try:
            layer.restore_data_state(entries.pop(0))
        except ReaderStateMismatch as err:
            problems.append(f"{_describe(layer, what)}: {err}")
    return problems


def _unpack(content, path):
    """(generator state, [saved entries per net] or None for version 1)."""
    if isinstance(content, dict) and "bit_generator" in content:
        return content, None                        # version 1: the generator alone
    if not (isinstance(content, dict) and content.get("format") == FORMAT):
        raise SolverStateError(f"{path}: not an sppcaffe resume state (no \"format\": "
                               f"\"{FORMAT}\")")
    if content.get("version") != VERSION:
        raise SolverStateError(f"{path}: resume state version {content.get('version')!r}; "
                               f"this sppcaffe reads versions 1 and {VERSION}")
    test_nets = content.get("test_nets", [])
    if "random" not in content or not isinstance(test_nets, list):
        raise SolverStateError(f"{path}: resume state without \"random\" or with a malformed "
                               "\"test_nets\"")
    return content["random"], [content.get("train_net", [])] + test_nets


def restore(solver, state_path):
    """Restore the sidecar of `state_path` into `solver`'s generator and
    data layers (after its nets are built).  Warns, naming them, about
    whatever cannot be restored; False when there is no sidecar."""
    return apply(solver, read_rng_state(state_path), state_path)


def apply(solver, content, state_path):
    """restore() with the sidecar's `content` already read (None: there was
    none), e.g. sent by rank 0 to the other ranks of a parallel run."""
    path = rng_path(state_path)
    nets = _nets(solver)
    if content is None:
        layers = [_describe(layer, what) for what, net in nets for layer, _ in _data_layers(net)]
        data = ("; the positions of its data layers are not restored either, they read from "
                "where a new run starts: " + ", ".join(layers)) if layers else ""
        log.warning("%s: no %s beside it (a state written by Caffe?): training resumes, but "
                    "will differ from the uninterrupted run: the random generator (Dropout "
                    "masks, DummyData refills) is not restored%s", state_path, path, data)
        return False
    generator, saved = _unpack(content, path)
    try:
        restore_generator_state(generator)
    except ValueError as err:
        raise SolverStateError(f"{path}: {err}") from None
    if saved is None:
        problems = [f"{_describe(layer, what)}: a version 1 file has no data positions"
                    for what, net in nets for layer, _ in _data_layers(net)]
    else:
        saved = saved + [[]] * (len(nets) - len(saved))
        problems = [problem for (what, net), entries in zip(nets, saved)
                    for problem in _restore_net(net, what, entries)]
    if problems:
        log.warning("%s: the positions of these data layers are not restored, they read "
                    "from where they stand (a new run's start), so training will differ from "
                    "the uninterrupted run: %s", path, "; ".join(problems))
    return True
