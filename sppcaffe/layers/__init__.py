"""Every layer type, one module per family.  Importing this package fills
the registry in sppcaffe.layer (type string -> class)."""
from . import (activations, conv, data, inner_product, loss, lrn, pooling,  # noqa: F401
               spp, structure, window_spp)
