"""Every layer type, one module per family.  Importing this package fills
the registry in sppcaffe.layer (type string -> class): each module of the
package is imported, so a new family is a new file and nothing else."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def __getattr__(name):
    # This package is also pycaffe's `caffe.layers` (NetSpec's L):
    # `sppcaffe.layers.Convolution(...)` specifies a layer.  Layer types are
    # CamelCase; other missing names stay missing (modules are lowercase).
    if name[:1].isupper():
        from ..net_spec import layers as netspec_layers
        return getattr(netspec_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
