"""Which axes of which blobs change with the graph's input sizes.

A graph with a dynamic batch (or dynamic image sizes) must not bake in a
dim that follows the input.  Instead of re-deriving every layer's shape
rules, the net is asked: it is reshaped at a few other input sizes (the
batch plus one; height and width plus one, and doubled plus an odd number,
so that strided layers see the change too) and every dim that moves is
dynamic.  The net is then reshaped back.

Dims that move together get one symbolic name: ``batch``, ``height`` and
``width`` for the inputs' (``<input>_height`` ... with several image
inputs), so an output (batch, 1000) reads as such.
"""
from ..layer import LayerError
from .registry import ExportError


def _probes(fed_shapes, dynamic_batch, dynamic_size):
    probes = []
    if dynamic_batch:
        probes.append({name: (s[0] + 1,) + s[1:] for name, s in fed_shapes.items() if s})
    if dynamic_size:
        images = {name: s for name, s in fed_shapes.items() if len(s) == 4}
        if not images:
            raise ExportError("dynamic sizes need an (N, C, H, W) input; the graph's inputs "
                              f"have shapes {fed_shapes}")
        probes.append({name: s[:2] + (s[2] + 1, s[3] + 1) for name, s in images.items()})
        probes.append({name: s[:2] + (2 * s[2] + 3, 2 * s[3] + 5) for name, s in images.items()})
    return probes


def _reshape(net, shapes):
    for name, shape in shapes.items():
        net.blobs[name].reshape(shape)
    net.reshape()


def probe_dynamic_axes(net, fed, dynamic_batch, dynamic_size):
    """({blob: frozenset of dynamic axes}, {(blob, axis): symbol}) for a
    graph whose inputs are the blobs `fed`."""
    base_fed = {name: tuple(net.blobs[name].shape) for name in fed}
    probes = _probes(base_fed, dynamic_batch, dynamic_size)
    if not probes:
        return {}, {}
    base = {name: tuple(blob.shape) for name, blob in net.blobs.items()}
    seen = []
    try:
        for probe in probes:
            try:
                _reshape(net, probe)
            except (LayerError, ValueError) as err:
                what = "batch size" if dynamic_batch and probe is probes[0] else "input size"
                raise ExportError(f"a dynamic {what} is not possible: at input shapes "
                                  f"{probe} the net fails: {err}") from None
            seen.append({name: tuple(blob.shape) for name, blob in net.blobs.items()})
    finally:
        _reshape(net, base_fed)
    dynamic, signatures = {}, {}
    for name, shape in base.items():
        axes = set()
        for shapes in seen:
            if len(shapes[name]) != len(shape):
                raise ExportError(f"blob '{name}' changes its number of axes with the input "
                                  f"sizes ({shape} -> {shapes[name]}): no fixed ONNX shape")
            axes |= {a for a, (d0, d1) in enumerate(zip(shape, shapes[name])) if d0 != d1}
        dynamic[name] = frozenset(axes)
        for a in axes:
            signatures[name, a] = (shape[a],) + tuple(shapes[name][a] for shapes in seen)
    return dynamic, _symbols(signatures, base_fed)


def _symbols(signatures, fed_shapes):
    """Symbolic dim names, the inputs' first: dims with one signature share a name."""
    named = {}
    images = [name for name, s in fed_shapes.items() if len(s) == 4]
    for name in fed_shapes:
        for axis, label in ((0, "batch"), (2, "height"), (3, "width")):
            key = signatures.get((name, axis))
            if key is None or key in named:
                continue
            if axis == 0 or len(images) == 1:
                named[key] = label
            else:
                named[key] = f"{name}_{label}"
    return {(blob, axis): named.get(sig, f"{blob}_dim{axis}")
            for (blob, axis), sig in signatures.items()}
