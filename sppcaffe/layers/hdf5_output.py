"""HDF5Output, as Caffe's HDF5OutputLayer: writes its two bottoms to an
HDF5 file (hdf5_output_param.file_name) as float datasets "data" and
"label".

Caffe's behaviour, followed exactly:
- setup creates the file, truncating one that exists (H5F_ACC_TRUNC);
- forward writes both bottoms, each with its legacy 4-D shape (num,
  channels, height, width): an (N, D) blob is stored as (N, D, 1, 1);
  the two must have the same num;
- a file holds one batch: Caffe's second forward fails because the
  datasets exist already, and so does this one (with an error naming the
  layer instead of an abort);
- no tops, no gradient.

The file is opened for each write and closed after it, so it can be read
while the net lives.  In GPU mode forward runs this host code (the layer's
job is host I/O): reading the bottoms copies them from the device.
"""
from ..layer import Layer, register

DATASETS = ("data", "label")


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    exact_num_bottom = 2
    exact_num_top = 0

    def layer_setup(self, bottom, top):
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is not set")
        import h5py                 # imported when used: `import sppcaffe` stays light
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as err:
            raise self.error(f"failed to open HDF5 file '{self.file_name}': {err}") from err
        self._written = False

    def reshape(self, bottom, top):
        pass

    def _legacy_shape(self, blob):
        if blob.ndim > 4:
            raise self.error(f"blob '{blob.name}' has {blob.ndim} axes; Caffe's HDF5Output "
                             "writes (num, channels, height, width) and takes at most 4")
        return (blob.num, blob.channels, blob.height, blob.width)

    def forward(self, bottom, top):
        data, label = bottom
        if data.num != label.num:
            raise self.error(f"data and label must have the same batch size, got {data.num} "
                             f"and {label.num}")
        if self._written:
            raise self.error(f"'{self.file_name}' already holds the datasets of an earlier "
                             "forward; as in Caffe, an HDF5Output layer writes one batch per file")
        shapes = [self._legacy_shape(b) for b in bottom]
        import h5py
        try:
            with h5py.File(self.file_name, "r+") as f:
                for name, blob, shape in zip(DATASETS, bottom, shapes):
                    f.create_dataset(name, data=blob.cpu_data.reshape(shape))
        except OSError as err:
            raise self.error(f"failed to write HDF5 file '{self.file_name}': {err}") from err
        self._written = True
