"""The converters, one module per layer family (as sppcaffe/layers).
Importing this package fills sppcaffe.onnx.registry: each module is
imported, so a new family is a new file and nothing else."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
