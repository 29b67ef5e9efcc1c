"""The converters, keyed by the prototxt `type` string (as sppcaffe's layer
registry): ``@converter("ReLU")`` on a function taking a LayerExport and
returning the ONNX value of each top."""

CONVERTERS = {}


class ExportError(ValueError):
    """A net, or one of its layers, that has no exact ONNX form; the message
    names the layer and says why."""


def converter(*type_names):
    """Function decorator: the converter of these layer types."""
    def deco(fn):
        for name in type_names:
            if name in CONVERTERS:
                raise ValueError(f"layer type '{name}' has two ONNX converters")
            CONVERTERS[name] = fn
        return fn
    return deco
