"""Weight fillers, as Caffe's FillerParameter types.

Values are drawn in float32: ZF-5's fc6 has 52M weights, and float64
temporaries would double the memory a net takes to build.
"""
import numpy as np

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
    f = np.ceil(shape[3] / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - np.abs(np.arange(shape[3]) / f - c)
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
