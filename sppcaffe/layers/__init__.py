"""Every layer type, one module per family.  Importing this package fills
the registry in sppcaffe.layer (type string -> class): each module of the
package is imported, so a new family is a new file and nothing else."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
