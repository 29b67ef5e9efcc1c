"""Parameter: a learnable blob offered to the net as a top."""
from ..layer import Layer, register


@register("Parameter")
class ParameterLayer(Layer):
    """No bottoms; the top *is* the layer's one parameter blob of
    parameter_param.shape (Caffe's ShareData + ShareDiff): whatever
    gradient reaches the top is the parameter's gradient, so backward has
    nothing to do.  Not filled: a new parameter is zeros, as in Caffe."""
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        if not self.blobs:
            shape = tuple(self.param.parameter_param.shape.dim)
            self.blobs = [self.new_param_blob(shape, 0)]

    def reshape(self, bottom, top):
        self._share(top)

    def _share(self, top):
        # Every pass: the net may since have swapped the blob for a shared
        # one, or loaded weights of a new size into it.
        param = self.blobs[0]
        top[0].view_of(param, param.shape)

    def forward(self, bottom, top):
        self._share(top)

    def forward_gpu(self, bottom, top):
        self._share(top)        # nothing moves on the device either
