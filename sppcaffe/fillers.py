"""Weight fillers, as Caffe's FillerParameter types, and device fills.

Values are drawn in float32: ZF-5's fc6 has 52M weights, and float64
temporaries would double the memory a net takes to build.

Fillers run on the host in either mode, as Caffe's do; a filled blob is
copied to the device once, when device code first reads it.  Device code
that needs memory set or randomised in place uses the ``gpu_*`` helpers
at the end (kernels in backends/gpu/kernels/fill.cu).
"""
import numpy as np

from .backends import gpu
from .random import get_rng


def _fans(shape):
    count = int(np.prod(shape))
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_norm_n(param, shape):
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == param.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == param.FAN_OUT:
        return fan_out
    return fan_in


F32 = np.float32


def _uniform_values(low, high, shape, rng):
    values = rng.random(size=shape, dtype=F32)
    values *= F32(high - low)
    values += F32(low)
    return values


def _normal_values(mean, std, shape, rng):
    values = rng.standard_normal(size=shape, dtype=F32)
    values *= F32(std)
    values += F32(mean)
    return values


def _constant(p, shape, rng):
    return F32(p.value)


def _uniform(p, shape, rng):
    return _uniform_values(p.min, p.max, shape, rng)


def _gaussian(p, shape, rng):
    values = _normal_values(p.mean, p.std, shape, rng)
    if p.sparse >= 0:
        # Each output unit (axis 0) keeps on average `sparse` inputs.
        keep = p.sparse / shape[0]
        values *= rng.random(size=shape, dtype=F32) < keep
    return values


def _positive_unitball(p, shape, rng):
    values = rng.random(size=shape, dtype=F32).reshape(shape[0], -1)
    values /= values.sum(axis=1, keepdims=True)
    return values.reshape(shape)


def _xavier(p, shape, rng):
    scale = np.sqrt(3.0 / _variance_norm_n(p, shape))
    return _uniform_values(-scale, scale, shape, rng)


def _msra(p, shape, rng):
    return _normal_values(0.0, np.sqrt(2.0 / _variance_norm_n(p, shape)), shape, rng)


def _bilinear(p, shape, rng):
    # Upsampling kernel for deconvolution: a separable tent per channel.
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"bilinear filler needs a 4-d blob with square kernels, got {shape}")
    # Caffe computes in float (c rounded once from double), so every value
    # is reproduced bit for bit, not just to within an ulp.
    f = int(np.ceil(shape[3] / 2.0))
    c = F32((2 * f - 1 - f % 2) / (2.0 * f))
    ramp = F32(1) - np.abs(np.arange(shape[3], dtype=F32) / F32(f) - c)
    return np.broadcast_to(np.outer(ramp, ramp), shape)


FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def fill(blob, param, rng=None):
    """Fill `blob.data` according to a FillerParameter message."""
    try:
        filler = FILLERS[param.type]
    except KeyError:
        raise ValueError(f"unknown filler type '{param.type}' "
                         f"(known: {', '.join(sorted(FILLERS))})") from None
    if blob.count == 0:
        return
    blob.data[...] = filler(param, blob.shape, rng or get_rng())


# ---------------------------------------------------------------------------
# Device fills (Caffe's caffe_gpu_set / caffe_gpu_rng_*), on the current
# device; `ptr` is a device address such as ``blob.mutable_gpu_data``.
# The random ones are counter-based: value k of a fill is a function of
# (seed, offset + k) only.  Without a seed, one is drawn from the
# framework's generator, so `set_random_seed` makes them repeatable too.
# ---------------------------------------------------------------------------
def _seed(seed):
    if seed is None:
        return int(get_rng().integers(0, 2 ** 64, dtype=np.uint64))
    return int(seed) % 2 ** 64


def gpu_set(n, value, ptr):
    """ptr[0:n] = value."""
    gpu.kernel("fill_constant")(n, n, float(value), ptr)


def gpu_rng_uniform(n, low, high, ptr, seed=None, offset=0):
    """ptr[0:n] uniform in [low, high) (24 random bits each)."""
    gpu.kernel("fill_uniform")(n, n, float(low), float(high), _seed(seed), int(offset), ptr)


def gpu_rng_gaussian(n, mean, std, ptr, seed=None, offset=0):
    """ptr[0:n] normal with `mean` and `std` (Box-Muller)."""
    gpu.kernel("fill_gaussian")(n, n, float(mean), float(std), _seed(seed), int(offset), ptr)


def gpu_rng_bits(n, ptr, seed=None, offset=0):
    """ptr[0:n] random unsigned 32-bit ints (a uint32 buffer)."""
    gpu.kernel("fill_random_bits")(n, n, _seed(seed), int(offset), ptr)
