"""Convolution, as Caffe's ConvolutionLayer (2-D, grouped, dilated).

The whole batch goes through one im2col and one GEMM per group (see
sppcaffe.im2col for the column layout) instead of Caffe's per-image loop;
the sums are the same, only their order differs.  Columns computed in
forward are kept for the weight gradient, so backward redoes im2col only
when something else used the buffer in between.  Where an image's columns
fit a core's cache, training runs a chunk of images at a time on threads
(``chunked_training``): each chunk's im2col and product in forward, its
weight-gradient term, column gradient and col2im in backward, the columns
kept in a block per chunk.  When the net never runs
this layer's backward (``forward_only``), im2col instead runs on a few
images at a time (``forward_column_bytes``), and chunks that fit a core's
cache (``cache_column_bytes``) run whole on separate threads.  Depthwise
convolutions (group == channels) run sppcaffe.depthwise on the host: no
columns at all.

The device code (forward_gpu/backward_gpu) keeps that layout: im2col runs
on chunks of images sized so the column buffer stays within
``gpu_column_bytes``, and the groups are one strided-batched GEMM.
"""
import functools

import numpy as np

from .. import depthwise
from ..backends import gpu
from ..im2col import Geometry, col2im, im2col
from ..layer import Layer, register
from ..threads import add_matmul, matmul, matmul_stack, run_tasks
from ..workspace import thread_scratch


def _spatial_setting(layer, p, field, hw_prefix, default):
    """A per-axis setting as (h, w): from `<prefix>_h`/`<prefix>_w`, or from
    the repeated `field` given once (both axes) or twice (h, w)."""
    values = list(getattr(p, field))
    if hw_prefix and (p.HasField(hw_prefix + "_h") or p.HasField(hw_prefix + "_w")):
        if values:
            raise layer.error(f"give either {field} or {hw_prefix}_h/{hw_prefix}_w, not both")
        return (getattr(p, hw_prefix + "_h"), getattr(p, hw_prefix + "_w"))
    if not values:
        if default is None:
            raise layer.error(f"{field} (or {hw_prefix}_h and {hw_prefix}_w) is required")
        return (default, default)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    raise layer.error(f"{field} must be given once or once per spatial axis (2 here), "
                      f"got {len(values)} values")


def read_geometry(layer, p):
    """Geometry of a ConvolutionParameter, validated as Caffe does."""
    geom = Geometry(kernel=_spatial_setting(layer, p, "kernel_size", "kernel", None),
                    pad=_spatial_setting(layer, p, "pad", "pad", 0),
                    stride=_spatial_setting(layer, p, "stride", "stride", 1),
                    dilation=_spatial_setting(layer, p, "dilation", None, 1))
    for name in ("kernel", "stride", "dilation"):
        if min(getattr(geom, name)) < 1:
            raise layer.error(f"{name} must be positive, got {getattr(geom, name)}")
    return geom


def _scale_shift(y, scale, shift):
    """y = y * scale + shift in place, per channel ((O, 1) columns or None)."""
    if scale is not None:
        y *= scale
    if shift is not None:
        y += shift


def _rows(rows, scale, shift):
    """(scale, shift) of the output rows `rows` ((O, 1) columns or None)."""
    return (None if scale is None else scale[rows]), (None if shift is None else shift[rows])


def _group_slices(total, group):
    size = total // group
    return [slice(g * size, (g + 1) * size) for g in range(group)]


@register("Convolution")
class ConvolutionLayer(Layer):
    min_num_bottom = 1
    min_num_top = 1
    # Device memory for the columns of one chunk of images (and their GEMM
    # output); tests set it small to force several chunks.
    gpu_column_bytes = 256 << 20

    # ---- setup --------------------------------------------------------
    def _read_convolution_param(self, bottom, top):
        """The fields Convolution and Deconvolution share, checked; the
        ConvolutionParameter."""
        if len(bottom) != len(top):
            raise self.error(f"needs as many tops as bottoms, got {len(bottom)} bottom(s) "
                             f"and {len(top)} top(s)")
        p = self.param.convolution_param
        self._check_axes(p, bottom[0].shape)
        self.geom = read_geometry(self, p)
        self.channels = bottom[0].shape[1]
        self.num_output = p.num_output
        self.group = p.group
        self.bias_term = p.bias_term
        if self.num_output < 1:
            raise self.error("num_output must be positive")
        if self.group < 1 or self.channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels "
                             f"({self.channels}) and num_output ({self.num_output})")
        return p

    def layer_setup(self, bottom, top):
        p = self._read_convolution_param(bottom, top)
        kh, kw = self.geom.kernel
        weight_shape = (self.num_output, self.channels // self.group, kh, kw)
        self._setup_params(p, weight_shape)
        self.param_propagate_down = [True] * len(self.blobs)
        self._out_groups = _group_slices(self.num_output, self.group)
        self._col_groups = _group_slices(self.channels * kh * kw, self.group)
        self._in_groups = _group_slices(self.channels, self.group)
        # One input channel per group: the host runs sppcaffe.depthwise.
        self._depthwise = self.group > 1 and self.group == self.channels
        self._dev = gpu.Workspace()
        self._bottom_shape = None
        self._folded_w = None

    def _check_axes(self, p, shape):
        axis = p.axis + len(shape) if p.axis < 0 else p.axis
        if axis != 1:
            raise self.error(f"only axis 1 is supported as the channel axis, got {p.axis}")
        if len(shape) != 4:
            raise self.error(f"only 2-D convolution is supported: input {shape} has "
                             f"{len(shape) - 2} spatial axes")

    def _setup_params(self, p, weight_shape):
        shapes = [weight_shape] + ([(self.num_output,)] if self.bias_term else [])
        self.setup_param_blobs(shapes, [p.weight_filler, p.bias_filler])

    # ---- reshape ------------------------------------------------------
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if shape != self._bottom_shape:
            self._plan(shape)
        for b in bottom[1:]:
            if b.shape != shape:
                raise self.error(f"all bottoms must have the same shape, got {b.shape} "
                                 f"and {shape}")
        for t in top:
            t.reshape(self._top_shape)

    def _plan(self, shape):
        """Validate a new input shape and drop buffers sized for the old one."""
        if len(shape) != 4:
            raise self.error(f"input must stay 4-D, got shape {shape}")
        n, c, h, w = shape
        if c != self.channels:
            raise self.error(f"input has {c} channels, the weights expect {self.channels}")
        ho, wo = self.geom.output_size(h, w)
        if ho < 1 or wo < 1:
            raise self.error(f"kernel extent {self.geom.extent()} is larger than the padded "
                             f"input {(h + 2 * self.geom.pad[0], w + 2 * self.geom.pad[1])}")
        self._bottom_shape = shape
        self._top_shape = (n, self.num_output, ho, wo)
        self._cols = {}          # bottom index -> column matrix
        self._col_valid = {}     # bottom index -> holds that bottom's current im2col
        self._out_cols = None    # (num_output, N*Ho*Wo) GEMM output / top diff, transposed
        self._padded = None      # padding scratch shared by im2col and col2im
        self._weight_terms = None  # per-chunk weight-gradient terms (_backward_kept_chunks)
        self._depthwise_plan = None
        self._dev_cols_of = None  # (bottom index, buffer): device columns of that whole batch

    # ---- helpers --------------------------------------------------------
    def _buffer(self, name, shape):
        buf = getattr(self, name)
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, np.float32)
            setattr(self, name, buf)
        return buf

    def _pad_scratch(self):
        if self.geom.pad == (0, 0):
            return None
        n, c, h, w = self._bottom_shape
        ph, pw = self.geom.pad
        return self._buffer("_padded", (n, c, h + 2 * ph, w + 2 * pw))

    def _im2col(self, i, x):
        self._cols[i] = im2col(x, self.geom, self._cols.get(i), self._pad_scratch())
        self._col_valid[i] = True
        return self._cols[i]

    def _depthwise_geometry(self):
        if self._depthwise_plan is None:
            self._depthwise_plan = depthwise.DepthwisePlan(
                self._bottom_shape, self.geom, self.num_output // self.group)
        return self._depthwise_plan

    def _weights2d(self):
        w = self.blobs[0].data
        return w.reshape(w.shape[0], -1)

    # ---- forward --------------------------------------------------------
    # The net sets `fold` to a function giving (a, c) while a BatchNorm
    # (+ Scale) chain after this layer is folded in (sppcaffe/fusion.py):
    # the top is then a * conv + c per channel.
    fold = None

    def forward(self, bottom, top):
        # The top is scale * (w2 conv x) + shift per channel; scale is None
        # but with a fold whose scale goes onto the output.
        w2 = self._weights2d()
        scale, shift = None, self.blobs[1].data[:, None] if self.bias_term else None
        if self.fold is not None:
            w2, scale, shift = self._folded(w2, shift)
        n, o = self._top_shape[:2]
        for i, (b, t) in enumerate(zip(bottom, top)):
            y = t.data.reshape(n, o, -1)
            if self._depthwise:
                depthwise.forward(self._depthwise_geometry(), b.data, w2,
                                  None if shift is None else shift[:, 0], t.data)
            elif self.geom.is_pointwise():
                self._forward_pointwise(b.data, w2, y)
                _scale_shift(y, scale, shift)
            elif self.forward_only:
                self._col_valid[i] = False
                self._forward_chunks(b.data, w2, scale, shift, y)
            elif (step := self._kept_step()):
                self._forward_kept_chunks(i, step, b.data, w2, scale, shift, y)
            else:
                self._forward_columns(self._im2col(i, b.data), w2, scale, shift, y)

    def _folded(self, w2, bias):
        """(weights, scale, shift) of the folded chain: a * (W x + b) + c.
        `a` scales the weights, or the output where that is smaller (late
        layers at batch 1: N*Ho*Wo < C*kh*kw), since either costs a pass."""
        a, c = self.fold()
        shift = (c if bias is None else bias[:, 0] * a + c)[:, None]
        n, _, ho, wo = self._top_shape
        if self._depthwise or n * ho * wo >= w2.shape[1]:
            w2 = np.multiply(w2, a[:, None], out=self._buffer("_folded_w", w2.shape))
            return w2, None, shift
        return w2, a[:, None], shift

    # Column rows per group up to which each image gets its own product,
    # written straight into the top (LeNet's conv1, 25 rows: 0.3 ms instead
    # of 0.8 ms for one wide product and the transpose after it).
    stack_rows = 64

    def _per_image(self):
        """Few column rows per group: one product per image (see stack_rows)."""
        group_rows = self._col_groups[0]
        return group_rows.stop - group_rows.start <= self.stack_rows

    def _forward_columns(self, col, w2, scale, shift, y, out=None):
        n, o, p = y.shape
        if n == 1 or self._per_image():
            # Per image: no (O, N, P) -> (N, O, P) copy.
            cols = col.reshape(col.shape[0], n, p)
            for og, kg in zip(self._out_groups, self._col_groups):
                if n == 1:
                    matmul(w2[og], col[kg], y[0, og])
                    _scale_shift(y[:, og], *_rows(og, scale, shift))
                else:
                    # The bias add rides with each block of images, on its thread.
                    group_scale, group_shift = _rows(og, scale, shift)
                    matmul_stack(w2[og], cols[kg].transpose(1, 0, 2), y[:, og],
                                 then=lambda lo, hi, og=og, a=group_scale, c=group_shift:
                                 _scale_shift(y[lo:hi, og], a, c))
            return
        if out is None:
            out = self._buffer("_out_cols", (o, n * p))
        for og, kg in zip(self._out_groups, self._col_groups):
            matmul(w2[og], col[kg], out[og])
        # (O, N, P) -> (N, O, P) is the one copy the batch-wide GEMM costs;
        # the bias add (or a fold's scale) rides along with it.
        out_t = out.reshape(o, n, p).transpose(1, 0, 2)
        if scale is not None:
            np.multiply(out_t, scale, out=y)
            _scale_shift(y, None, shift)
        elif shift is None:
            y[...] = out_t
        else:
            np.add(out_t, shift, out=y)

    # Without a backward to keep columns for, im2col runs on a few images at
    # a time, in scratch all layers share: a deploy net then holds one
    # chunk's columns instead of every layer's whole batch.  Chunks of about
    # `cache_column_bytes` run whole on each thread (im2col, product, bias
    # add while the columns are in that core's cache): LeNet's test net at
    # batch 100, 9.4 -> 8.8 ms per forward pass (median, same process).
    forward_column_bytes = 16 << 20
    cache_column_bytes = 1 << 20

    def _forward_chunks(self, x, w2, scale, shift, y):
        n, o, p = y.shape
        k = self._col_groups[-1].stop
        in_cache = self._images_per_cache_chunk(n, k, p)
        step = max(1, min(n, self.forward_column_bytes // (4 * k * p), in_cache or n))
        chunks = self._chunks(step)
        if not in_cache or len(chunks) == 1:
            # An image's columns larger than the cache (ZF-5 at 224x224:
            # 2-7 MB): nothing to keep in cache, so the products split
            # instead (one image per thread was slower: 300 against 240 ms
            # for ZF-5's forward at batch 8).
            for lo, hi in chunks:
                self._forward_chunk(x, w2, scale, shift, y, lo, hi)
            return
        run_tasks(("conv chunks", x.shape, w2.shape, step),
                  [functools.partial(self._forward_chunk, x, w2, scale, shift, y, lo, hi)
                   for lo, hi in chunks])

    def _forward_chunk(self, x, w2, scale, shift, y, lo, hi, col=None):
        """Images lo..hi: im2col into `col` (this thread's scratch if None),
        product and bias add."""
        _, o, p = y.shape
        k = self._col_groups[-1].stop
        m = hi - lo
        if col is None:
            col = thread_scratch("conv_columns", (k, m * p))
        im2col(x[lo:hi], self.geom, col, self._thread_padded(x[lo:hi].shape))
        out = thread_scratch("conv_products", (o, m * p)) if m > 1 else None
        self._forward_columns(col, w2, scale, shift, y[lo:hi], out)

    # Training, where an image's columns fit a core's cache: forward runs in
    # cache-sized chunks of images as a forward-only net does, but keeps each
    # chunk's columns, in a block of their own, for backward, where each
    # chunk's weight-gradient term, column gradient and col2im again run
    # whole on one thread while its columns are in that core's cache
    # (LeNet's training iteration 14.0 -> 12.8 ms, median, interleaved in
    # one process).  Off: one batch-wide im2col and product each way.
    chunked_training = True

    def _kept_step(self):
        """Images per kept chunk of columns, or 0 for the batch-wide way."""
        n, _, ho, wo = self._top_shape
        if not self.chunked_training or n == 1 or self._per_image():
            return 0
        step = self._images_per_cache_chunk(n, self._col_groups[-1].stop, ho * wo)
        # One chunk: the batch-wide products split over the threads instead.
        # Chunks of few output columns make products too narrow to run near
        # the BLAS's peak (CIFAR-10 quick's conv2 and conv3, 256 and 320
        # columns a chunk: 5-6% slower than batch-wide; LeNet's conv2, 512:
        # 9% faster; its conv1, 3072: 13% faster).
        return step if step < n and step * ho * wo >= self.min_chunk_columns else 0

    min_chunk_columns = 512

    def _kept_chunk(self, i, lo, hi):
        """Columns (K, (hi-lo)*P) of images lo..hi in bottom i's kept blocks
        (allocated on first use: called before the tasks start, never from
        them, so that two threads cannot each allocate a buffer)."""
        n, _, ho, wo = self._top_shape
        k, p = self._col_groups[-1].stop, ho * wo
        blocks = self._cols.get(i)
        if blocks is None or blocks.shape != (n * k * p,):
            blocks = self._cols[i] = np.empty(n * k * p, np.float32)
        return blocks[lo * k * p:hi * k * p].reshape(k, (hi - lo) * p)

    def _forward_kept_chunks(self, i, step, x, w2, scale, shift, y):
        run_tasks(("conv kept chunks", x.shape, w2.shape, step),
                  [functools.partial(self._forward_chunk, x, w2, scale, shift, y, lo, hi,
                                     self._kept_chunk(i, lo, hi))
                   for lo, hi in self._chunks(step)])
        self._col_valid[i] = True

    def _backward_kept_chunks(self, i, step, dy, b, want_w, want_x):
        """Backward over the kept chunks of `step` images: each chunk's
        weight-gradient term into a slot of its own (summed in chunk order
        afterwards, so the bits never depend on threads), its column
        gradient in thread scratch and col2im into its images."""
        chunks = self._chunks(step)
        n, o, p = dy.shape
        k = self._col_groups[-1].stop
        w2 = self._weights2d()
        valid = self._col_valid.get(i)
        # Each term is computed transposed, col @ dy^T: with few outputs
        # OpenBLAS runs that way faster (see _backward_columns).
        og_size = o // self.group
        terms = self._buffer("_weight_terms", (len(chunks), self.group, w2.shape[1], og_size)) \
            if want_w else None

        def chunk(c, lo, hi, col):
            if not valid:
                im2col(b.data[lo:hi], self.geom, col, self._thread_padded(b.data[lo:hi].shape))
            m = hi - lo
            dy_t = thread_scratch("conv_products", (o, m * p))
            dy_t.reshape(o, m, p)[...] = dy[lo:hi].transpose(1, 0, 2)
            if want_w:
                for g, (og, kg) in enumerate(zip(self._out_groups, self._col_groups)):
                    np.matmul(col[kg], dy_t[og].T, out=terms[c, g])
            if want_x:
                dcol = thread_scratch("conv_columns", (k, m * p))
                for og, kg in zip(self._out_groups, self._col_groups):
                    np.matmul(w2[og].T, dy_t[og], out=dcol[kg])
                col2im(dcol, self.geom, b.diff[lo:hi], self._thread_padded(b.diff[lo:hi].shape))
        run_tasks(("conv kept chunks backward", b.data.shape, w2.shape, step, want_w, want_x),
                  [functools.partial(chunk, c, lo, hi, self._kept_chunk(i, lo, hi))
                   for c, (lo, hi) in enumerate(chunks)])
        self._col_valid[i] = True
        if want_w:
            grad = self.blobs[0].diff.reshape(w2.shape)
            for term in terms:
                for g, og in enumerate(self._out_groups):
                    grad[og] += term[g].T

    def _forward_pointwise(self, x, w2, y):
        # 1x1 stride 1: each image's (C, H*W) block already is its column
        # matrix, so a stacked matmul writes the top directly.
        x3 = x.reshape(x.shape[0], x.shape[1], -1)
        for og, cg in zip(self._out_groups, self._in_groups):
            np.matmul(w2[og], x3[:, cg], out=y[:, og])

    # ---- backward -------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = t.diff.reshape(t.diff.shape[0], t.diff.shape[1], -1)
            if want_b:
                self.blobs[1].diff += dy.sum(axis=(0, 2), dtype=np.float32)
            want_x = propagate_down[i]
            if not (want_w or want_x):
                continue
            if self._depthwise:
                w2 = self._weights2d()
                depthwise.backward(self._depthwise_geometry(), b.data, w2, t.diff,
                                   self.blobs[0].diff.reshape(w2.shape) if want_w else None,
                                   b.diff if want_x else None)
            elif self.geom.is_pointwise():
                self._backward_pointwise(dy, b, want_w, want_x)
            else:
                self._backward_columns(i, dy, b, want_w, want_x)

    def _backward_columns(self, i, dy, b, want_w, want_x):
        n, o, p = dy.shape
        if (step := self._kept_step()):
            self._backward_kept_chunks(i, step, dy, b, want_w, want_x)
            return
        col = self._cols[i] if self._col_valid.get(i) else self._im2col(i, b.data)
        if n > 1 and self._per_image():
            self._backward_per_image(i, dy, b, col, want_w, want_x)
            return
        dy_t = self._buffer("_out_cols", (o, n * p))
        dy_t.reshape(o, n, p)[...] = dy.transpose(1, 0, 2)
        w2 = self._weights2d()
        if want_w:
            grad = self.blobs[0].diff.reshape(w2.shape)
            # With few outputs (LeNet: 20, 50) OpenBLAS runs the transposed
            # product col @ dy^T 10-25% faster; with ZF-5's 96-384 the plain
            # one is 0-9% faster.
            few = self.num_output // self.group < 64
            for og, kg in zip(self._out_groups, self._col_groups):
                if few:
                    add_matmul(col[kg], dy_t[og].T, grad[og].T)
                else:
                    add_matmul(dy_t[og], col[kg].T, grad[og])
        if want_x:
            # The column gradient overwrites the cached columns.
            self._col_valid[i] = False
            for og, kg in zip(self._out_groups, self._col_groups):
                matmul(w2[og].T, dy_t[og], col[kg])
            col2im(col, self.geom, b.diff, self._pad_scratch())

    def _images_per_cache_chunk(self, n, k, p):
        """Images per chunk whose columns (k x p each) fit
        cache_column_bytes, or 0 where one image's do not."""
        per_image = 4 * k * p
        if per_image > self.cache_column_bytes:
            return 0
        return min(n, self.cache_column_bytes // per_image)

    def _thread_padded(self, shape):
        """This thread's im2col/col2im scratch for images of `shape`, or None
        without padding."""
        if self.geom.pad == (0, 0):
            return None
        n, c, h, w = shape
        ph, pw = self.geom.pad
        return thread_scratch("conv_padded", (n, c, h + 2 * ph, w + 2 * pw))

    def _backward_per_image(self, i, dy, b, col, want_w, want_x):
        """Few column rows (as the per-image forward): one product per image
        on dy as it is, no (O, N*P) transpose; the weight gradient's image
        terms are added in image order (LeNet's conv1: 1.2 -> 0.35 ms)."""
        n, o, p = dy.shape
        w2 = self._weights2d()
        cols = col.reshape(col.shape[0], n, p).transpose(1, 0, 2)
        if want_w:
            grad = self.blobs[0].diff.reshape(w2.shape)
            for og, kg in zip(self._out_groups, self._col_groups):
                terms = thread_scratch("conv_weight_terms", (n, og.stop - og.start,
                                                              kg.stop - kg.start))
                matmul_stack(dy[:, og], cols[:, kg].transpose(0, 2, 1), terms)
                grad[og] += terms.sum(axis=0)
        if want_x:
            self._col_valid[i] = False        # the column gradient overwrites them
            for og, kg in zip(self._out_groups, self._col_groups):
                matmul_stack(w2[og].T, dy[:, og], cols[:, kg])
            col2im(col, self.geom, b.diff, self._pad_scratch())

    def _backward_pointwise(self, dy, b, want_w, want_x):
        w2 = self._weights2d()
        x3 = b.data.reshape(b.data.shape[0], b.data.shape[1], -1)
        dx3 = b.diff.reshape(x3.shape)
        if want_w:
            grad = self.blobs[0].diff.reshape(w2.shape)
            for og, cg in zip(self._out_groups, self._in_groups):
                grad[og] += np.matmul(dy[:, og], x3[:, cg].transpose(0, 2, 1)).sum(axis=0)
        if want_x:
            for og, cg in zip(self._out_groups, self._in_groups):
                np.matmul(w2[og].T, dy[:, og], out=dx3[:, cg])

    # ---- device code ------------------------------------------------------
    # Sizes: K = C*kh*kw column rows, P = Ho*Wo outputs per image, O outputs;
    # a chunk of L images has columns (K, L*P) and GEMM rows (O, L*P), group
    # g owning the contiguous row blocks g*K/G.. and g*O/G.. of each.
    def _sizes(self):
        n, c, h, w = self._bottom_shape
        kh, kw = self.geom.kernel
        ho, wo = self._top_shape[2:]
        return n, c * kh * kw, ho * wo, self.num_output

    def _chunk(self):
        """Images per im2col chunk: as many as fit in gpu_column_bytes, at least one."""
        n, k, p, o = self._sizes()
        per_image = 4 * (k + o) * p
        step = max(1, min(n, self.gpu_column_bytes // per_image))
        # The kernels index a chunk with 32-bit ints.
        if max(k * p, o * p, self._image_size()) * step >= 2 ** 31:
            raise self.error(f"input {self._bottom_shape} is too large for the device kernels "
                             f"(2^31 elements per chunk of images)")
        return step

    def _image_size(self):
        _, c, h, w = self._bottom_shape
        return c * h * w

    def _chunks(self, step):
        n = self._bottom_shape[0]
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def _geometry_args(self):
        _, c, h, w = self._bottom_shape
        g = self.geom
        return (c, h, w, *g.kernel, *g.pad, *g.stride, *g.dilation, *self._top_shape[2:])

    def _im2col_gpu(self, i, x, lo, hi, step):
        """Columns of images [lo, hi) of bottom `i` in the device column buffer."""
        _, k, p, _ = self._sizes()
        col = self._dev.floats("columns", k * step * p)
        if self._dev_cols_of == (i, col) and (lo, hi) == (0, self._bottom_shape[0]):
            return col          # forward left this bottom's columns in place
        count = self._bottom_shape[1] * (hi - lo) * p
        gpu.kernel("im2col_batch")(count, count, x + 4 * lo * self._image_size(), hi - lo,
                                   *self._geometry_args(), col)
        self._dev_cols_of = None
        return col

    def _gemm_groups(self, trans_a, trans_b, m, n, k, a, stride_a, b, stride_b, beta, c, stride_c):
        """One product per group (m, n, k are a group's), as a single call."""
        blas = gpu.blas()
        if self.group == 1:
            blas.gemm(trans_a, trans_b, m, n, k, 1.0, a, b, beta, c)
        else:
            blas.gemm_strided_batched(trans_a, trans_b, m, n, k, 1.0, a, stride_a, b, stride_b,
                                      beta, c, stride_c, self.group)

    def forward_gpu(self, bottom, top):
        n, k, p, o = self._sizes()
        kg, og = k // self.group, o // self.group
        w = self.blobs[0].gpu_data
        bias = self.blobs[1].gpu_data if self.bias_term else 0
        step = self._chunk()
        self._dev_cols_of = None        # new input: columns kept are for backward only
        for i, (b, t) in enumerate(zip(bottom, top)):
            x, y = b.gpu_data, t.mutable_gpu_data
            if self.geom.is_pointwise():
                self._forward_pointwise_gpu(x, w, bias, y)
                continue
            for lo, hi in self._chunks(step):
                span = (hi - lo) * p
                col = self._im2col_gpu(i, x, lo, hi, step)
                rows = self._dev.floats("rows", o * step * p)
                self._gemm_groups(False, False, og, span, kg, w, og * kg, col, kg * span, 0.0,
                                  rows, og * span)
                gpu.kernel("conv_rows_to_images")(o * span, o * span, rows, hi - lo, o, p, bias,
                                                  int(self.bias_term), y + 4 * lo * o * p)
                if (lo, hi) == (0, n):
                    self._dev_cols_of = (i, col)

    def _pointwise_products_gpu(self, transpose_w, w, src, src_channels, dst, dst_channels):
        """dst = W src (or W^T src) image by image, for a 1x1 convolution:
        each image's (channels, P) block is its own column matrix, so one
        product per group, batched over the images, writes dst directly."""
        n, _, p, _ = self._sizes()
        sg, dg = src_channels // self.group, dst_channels // self.group
        blas = gpu.blas()
        for g in range(self.group):
            blas.gemm_strided_batched(transpose_w, False, dg, p, sg, 1.0, w + 4 * g * sg * dg, 0,
                                      src + 4 * g * sg * p, src_channels * p, 0.0,
                                      dst + 4 * g * dg * p, dst_channels * p, n)

    def _forward_pointwise_gpu(self, x, w, bias, y):
        n, c, p, o = self._sizes()
        self._pointwise_products_gpu(False, w, x, c, y, o)
        if self.bias_term:
            # By chunks of images: a launch counts with 32-bit ints, and the
            # whole batch's top can hold 2^31 values or more.
            for lo, hi in self._chunks(self._chunk()):
                count = (hi - lo) * o * p
                gpu.kernel("conv_add_bias")(count, count, y + 4 * lo * o * p, bias, o, p)

    def backward_gpu(self, top, propagate_down, bottom):
        n, k, p, o = self._sizes()
        kg, og = k // self.group, o // self.group
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        pointwise = self.geom.is_pointwise()
        w = self.blobs[0].gpu_data
        step = self._chunk()
        for i, (t, b) in enumerate(zip(top, bottom)):
            dy = t.gpu_diff
            if want_b:
                self._bias_grad_gpu(dy)
            want_x = propagate_down[i]
            if want_x and pointwise:
                self._backward_pointwise_gpu(dy, w, b.mutable_gpu_diff)
            if not (want_w or (want_x and not pointwise)):
                continue
            # The weight gradient sums over images and positions, so it takes
            # both operands as (rows, L*P) -- for 1x1 too, where im2col is a
            # transpose -- and makes it one GEMM per chunk.
            x = b.gpu_data
            dx = b.mutable_gpu_diff if want_x and not pointwise else None
            image = self._image_size()
            for lo, hi in self._chunks(step):
                span = (hi - lo) * p
                dy_rows = self._dev.floats("rows", o * step * p)
                gpu.kernel("conv_images_to_rows")(o * span, o * span, dy + 4 * lo * o * p, hi - lo,
                                                  o, p, dy_rows)
                col = self._im2col_gpu(i, x, lo, hi, step) if want_w else \
                    self._dev.floats("columns", k * step * p)
                if want_w:
                    self._gemm_groups(False, True, og, kg, span, dy_rows, og * span, col,
                                      kg * span, 1.0, self.blobs[0].mutable_gpu_diff, og * kg)
                if dx is not None:
                    self._dev_cols_of = None    # the column gradient overwrites the columns
                    self._gemm_groups(True, False, kg, span, og, w, og * kg, dy_rows, og * span,
                                      0.0, col, kg * span)
                    count = (hi - lo) * image
                    gpu.kernel("col2im_batch")(count, count, col, hi - lo, *self._geometry_args(),
                                               dx + 4 * lo * image)

    def _bias_grad_gpu(self, dy):
        # Sum over positions, then over images: two gemv's against ones.
        n, _, p, o = self._sizes()
        blas = gpu.blas()
        ones = gpu.ones(max(n, p))
        per_image = self._dev.floats("bias_sums", n * o)
        blas.gemv(False, n * o, p, 1.0, dy, ones, 0.0, per_image)
        blas.gemv(True, n, o, 1.0, per_image, ones, 1.0, self.blobs[1].mutable_gpu_diff)

    def _backward_pointwise_gpu(self, dy, w, dx):
        _, c, _, o = self._sizes()
        self._pointwise_products_gpu(True, w, dy, o, dx, c)
