"""pycaffe's argument rules for Net.forward and Net.backward, with errors
that say what was wrong instead of failing somewhere inside.

As pycaffe's _Net_forward / _Net_backward (python/caffe/pycaffe.py):
keyword arrays given to forward must be exactly the net's inputs ('Input
blob arguments do not match net inputs.') and those given to backward
exactly its outputs ('Top diff arguments do not match net outputs.'); no
keywords at all runs on what the blobs hold.  `blobs` / `diffs` are lists
of blob names, `start` / `end` layer names.

sppcaffe's extensions: forward also takes the tops of data layers fed from
Python (``Net(..., data_shapes=...)``), each optional; and an input array
of another size than its blob (a new image size, another batch size)
reshapes the blob, as long as it has the blob's number of axes.
"""
import numpy as np

# dtype kinds a blob (float32) takes without losing meaning: bool, ints, floats.
_REAL_KINDS = "biuf"


def _where(net, method):
    return f"net '{net.name}': {method}"


def fed_blob_names(net):
    """The blobs forward may be given: the Input blobs, then the tops of
    data layers fed from Python."""
    names = list(net.inputs)
    for layer, tops in zip(net.layers, net.top_vecs):
        if getattr(layer, "fed_from_python", False):
            names += [t.name for t in tops if t.name not in names]
    return names


def blob_names(net, method, what, names):
    """`names` (the `blobs` or `diffs` argument: blob names, or None) as a
    list, checked to name blobs of the net."""
    if names is None:
        return []
    if isinstance(names, np.ndarray) or (
            isinstance(names, (list, tuple)) and any(isinstance(n, np.ndarray) for n in names)):
        kind = "input arrays" if method == "forward" else "output diffs"
        example = "data=x" if method == "forward" else "prob=g"
        raise TypeError(f"{_where(net, method)} takes the {kind} as keywords, e.g. "
                        f"net.{method}({example}); the first positional argument is `{what}`, "
                        "a list of blob names, and got an array")
    if isinstance(names, (str, bytes)):
        raise TypeError(f"{_where(net, method)}: `{what}` is a list of blob names, got the "
                        f"string {names!r} (write {what}=[{names!r}])")
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"{_where(net, method)}: `{what}` is a list of blob names, got "
                        f"{type(names).__name__}") from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{_where(net, method)}: `{what}` is a list of blob names, got "
                            f"{name!r} in it")
        if name not in net.blobs:
            raise KeyError(f"{_where(net, method)}: {what} names '{name}', but the net has no "
                           "blob of that name")
    return names


def check_layer_argument(net, method, what, value):
    """`start` / `end` must be a layer name (or None)."""
    if value is None or isinstance(value, str):
        return
    kind = "an array" if isinstance(value, np.ndarray) else f"{type(value).__name__} {value!r}"
    raise TypeError(f"{_where(net, method)}: `{what}` is a layer name, got {kind}")


def _real_array(net, method, name, value, kind):
    """`value` as an ndarray of a real dtype; a TypeError naming the blob
    otherwise (strings, objects, complex numbers, ragged lists)."""
    try:
        array = np.asarray(value)
    except ValueError as err:          # ragged nested lists
        raise TypeError(f"{_where(net, method)}: {kind} '{name}' is not an array: {err}") from None
    if array.dtype.kind not in _REAL_KINDS:
        raise TypeError(f"{_where(net, method)}: {kind} '{name}' must hold real numbers "
                        f"(it is stored as float32), got dtype {array.dtype}")
    return array


def _mismatch(what, given, expected):
    parts = [f"got {sorted(given)}, the net's are {list(expected)}"]
    extra = [n for n in given if n not in expected]
    missing = [n for n in expected if n not in given]
    if extra:
        parts.append(f"not {what}: {extra}")
    if missing:
        parts.append(f"missing: {missing}")
    return "; ".join(parts)


def checked_inputs(net, arrays):
    """forward's keyword arrays, checked: {name: ndarray}."""
    if not arrays:
        return {}
    fed = fed_blob_names(net)
    unknown = [name for name in arrays if name not in fed]
    missing = [name for name in net.inputs if name not in arrays]
    if unknown or missing:
        hint = ""
        readable = [name for name in unknown if name in net.blobs]
        if readable:
            hint = f" (to read {readable}, list them in blobs=[...])"
        raise ValueError(f"{_where(net, 'forward')}: Input blob arguments do not match net "
                         f"inputs: {_mismatch('inputs', arrays, fed)}{hint}; give every input, "
                         "or none to run on what the blobs hold")
    checked = {}
    for name, value in arrays.items():
        array = _real_array(net, "forward", name, value, "input")
        shape = net.blobs[name].shape
        if array.ndim != len(shape):
            hint = " (one item without its batch axis? x[np.newaxis] adds it)" \
                if array.ndim == len(shape) - 1 else ""
            raise ValueError(f"{_where(net, 'forward')}: input '{name}' has {len(shape)} axes, "
                             f"shape {shape}; got an array of shape {array.shape}{hint}")
        checked[name] = array
    return checked


def checked_top_diffs(net, arrays):
    """backward's keyword arrays, checked: {name: ndarray}."""
    if not arrays:
        return {}
    if set(arrays) != set(net.outputs):
        raise ValueError(f"{_where(net, 'backward')}: Top diff arguments do not match net "
                         f"outputs: {_mismatch('outputs', arrays, net.outputs)}; give every "
                         "output's diff, or none to run on what the diffs hold")
    checked = {}
    for name, value in arrays.items():
        array = _real_array(net, "backward", name, value, "diff of output")
        shape = net.blobs[name].shape
        if array.shape != shape:
            raise ValueError(f"{_where(net, 'backward')}: the diff of output '{name}' must "
                             f"have its shape {shape}, got {array.shape}")
        checked[name] = array
    return checked
