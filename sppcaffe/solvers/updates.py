"""The six update rules (Caffe's sgd_solvers.hpp and src/caffe/solvers/).

Every rule shares SGDSolver's ApplyUpdate: the rate from the lr policy,
gradient clipping (global L2 norm, before anything else), then per
learnable param: divide by iter_size, add weight decay (L2: decay * w, L1:
decay * sign(w); decay = weight_decay * decay_mult), turn the gradient
into the step with the rule (local_rate = rate * lr_mult), and finally
``data -= diff``.

The buffers are Caffe's: `history_blobs` is what snapshots save (one Blob
per param; AdaDelta and Adam append a second set), `update` and `temp` are
host scratch.  All arithmetic is float32 and in place, in Caffe's order.

In GPU mode the whole update runs on the device (``*_gpu`` methods,
kernels in backends/gpu/kernels/solvers.cu, one fused kernel per rule
doing the host code's operations in its order): the params and the
history stay there, and nothing is copied to the host but the gradient
norm when clipping.  The history Blobs mirror themselves, so a snapshot
reading them downloads them and a restore writing them uploads them.
"""
import logging
import math

import numpy as np

from ..backends import gpu, gpu_mode, native
from ..blob import Blob
from ..im2col import split_parallel
from ..workspace import Workspace
from .lr_policy import learning_rate
from .solver import Solver

log = logging.getLogger("sppcaffe")
F32 = np.float32


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum:
    history = momentum * history + local_rate * gradient; step = history."""
    type = "SGD"
    history_sets = 1        # history blobs per learnable param

    def _presolve(self):
        params = self.net.learnable_params
        # Zero on whichever side first uses them (fresh Blob memory is).
        self.history_blobs = [Blob(p.shape, name=f"history/{k * len(params) + i}")
                              for k in range(self.history_sets) for i, p in enumerate(params)]
        self._scratch = Workspace()     # host only: the device kernels need none

    def _host_history(self, i):
        return self.history_blobs[i].data

    def _update(self, i):
        return self._scratch.get(f"update/{i}", self.net.learnable_params[i].shape)

    def _temp(self, i):
        return self._scratch.get(f"temp/{i}", self.net.learnable_params[i].shape)

    def get_learning_rate(self):
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step,
                                                self.source)
        return rate

    def apply_update(self):
        """Caffe's SGDSolver::ApplyUpdate; counts the iteration."""
        rate = self.get_learning_rate()
        self._announce_rate(rate)
        on_device = gpu_mode()
        self._clip_gradients(on_device)
        params = self.net.learnable_params
        applied = set()
        for i in range(len(params)):
            self._normalize(i, on_device)
            if not on_device and self._fused_host_update(i, rate):
                applied.add(i)
                continue
            self._regularize(i, on_device)
            if on_device:
                self.compute_update_value_gpu(i, rate)
            else:
                self.compute_update_value(i, rate)
        if on_device:
            device = gpu.blas()
            for p in params:
                device.axpy(p.count, -1.0, p.gpu_diff, p.mutable_gpu_data)
        else:
            for i, p in enumerate(params):
                if i not in applied:
                    p.data -= p.diff
        self.iter += 1

    def _fused_host_update(self, i, rate):
        """Plain SGD with L2 decay (the usual solver) as one compiled pass
        over param i (native.c: the same operations, order and bits as
        _regularize, compute_update_value and ``data -= diff``); False when
        it does not apply (another rule, L1, no compiled loops)."""
        if type(self).compute_update_value is not SGDSolver.compute_update_value:
            return False
        decay = F32(self.param.weight_decay) * F32(self.net.params_weight_decay[i])
        if decay and self.param.regularization_type != "L2":
            return False
        lib = native.library()
        p = self.net.learnable_params[i]
        w, g, h = p.data, p.diff, self._host_history(i)
        if lib is None or not native.usable(w, g, h) or not w.dtype == g.dtype == h.dtype == F32:
            return False
        constants = (float(decay), float(self._local_rate(i, rate)),
                     float(F32(self.param.momentum)), int(bool(decay)))
        start = [native.pointer(a) for a in (w, g, h)]

        def part(lo, hi):       # elementwise: any split gives the same bits
            lib["sc_sgd_update"](*(s + 4 * lo for s in start), hi - lo, *constants)
        split_parallel(part, w.size, 3 * w.size)
        return True

    def _clip_gradients(self, on_device):
        clip = F32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = F32(0)
        if on_device:
            # One synchronising dot per param, as Caffe's ClipGradients does.
            device = gpu.blas()
            for p in params:
                ptr = p.gpu_diff
                sumsq += F32(device.dot(p.count, ptr, ptr))
        else:
            for p in params:
                d = p.diff.ravel()
                sumsq += F32(np.dot(d, d))
        norm = F32(np.sqrt(sumsq))
        if norm > clip:
            scale = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                     "factor %g", norm, clip, scale)
            for p in params:
                self._scale_diff(p, scale, on_device)

    @staticmethod
    def _scale_diff(p, scale, on_device):
        if on_device:
            gpu.blas().scal(p.count, float(scale), p.mutable_gpu_diff)
        else:
            p.diff *= scale

    def _normalize(self, i, on_device=False):
        """Gradients were summed over iter_size passes: make them a mean."""
        if self.param.iter_size == 1:
            return
        self._scale_diff(self.net.learnable_params[i], F32(1) / F32(self.param.iter_size),
                         on_device)

    def _regularize(self, i, on_device=False):
        decay = F32(self.param.weight_decay) * F32(self.net.params_weight_decay[i])
        if not decay:
            return
        p = self.net.learnable_params[i]
        kind = self.param.regularization_type
        if kind not in ("L1", "L2"):
            raise self._error(f"unknown regularization_type '{kind}' (known: L1, L2)")
        if on_device:
            if kind == "L2":
                gpu.blas().axpy(p.count, float(decay), p.gpu_data, p.mutable_gpu_diff)
            else:
                gpu.kernel("solver_l1_decay")(p.count, p.count, p.gpu_data, float(decay),
                                              p.mutable_gpu_diff)
            return
        scratch = self._temp(i)
        if kind == "L2":
            np.multiply(p.data, decay, out=scratch)
        else:
            np.sign(p.data, out=scratch)
            scratch *= decay
        p.diff += scratch

    def _local_rate(self, i, rate):
        return F32(rate) * F32(self.net.params_lr[i])

    def compute_update_value_gpu(self, i, rate):
        """The rule as one kernel (kernels/solvers.cu) over param i:
        (n, gradient, each history set of the param, the rule's constants)."""
        p = self.net.learnable_params[i]
        n = len(self.net.learnable_params)
        history = [self.history_blobs[k * n + i].mutable_gpu_data
                   for k in range(self.history_sets)]
        gpu.kernel(self.gpu_kernel)(p.count, p.count, p.mutable_gpu_diff, *history,
                                    *(float(c) for c in self._gpu_constants(i, rate)))

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, scaled = self._host_history(i), self._update(i)
        np.multiply(g, self._local_rate(i, rate), out=scaled)
        h *= F32(self.param.momentum)
        h += scaled
        g[...] = h

    gpu_kernel = "solver_sgd_update"

    def _gpu_constants(self, i, rate):
        return self.param.momentum, self._local_rate(i, rate)


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: the history as SGD's, the step
    (1 + momentum) * history_new - momentum * history_old."""
    type = "Nesterov"

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, previous, scratch = self._host_history(i), self._update(i), self._temp(i)
        momentum = F32(self.param.momentum)
        previous[...] = h
        np.multiply(g, self._local_rate(i, rate), out=scratch)
        h *= momentum
        h += scratch
        np.multiply(h, F32(1) + momentum, out=scratch)
        previous *= -momentum
        previous += scratch
        g[...] = previous

    gpu_kernel = "solver_nesterov_update"        # the constants are SGD's


class AdaGradSolver(SGDSolver):
    """history += g^2; step = local_rate * g / (sqrt(history) + delta)."""
    type = "AdaGrad"
    uses_delta = True

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise self._error("Momentum cannot be used with AdaGrad.")

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, u = self._host_history(i), self._update(i)
        np.square(g, out=u)
        h += u
        np.sqrt(h, out=u)
        u += F32(self.param.delta)
        np.divide(g, u, out=u)
        np.multiply(u, self._local_rate(i, rate), out=g)

    gpu_kernel = "solver_adagrad_update"

    def _gpu_constants(self, i, rate):
        return self.param.delta, self._local_rate(i, rate)


class RMSPropSolver(SGDSolver):
    """history = rms_decay * history + (1 - rms_decay) * g^2;
    step = local_rate * g / (sqrt(history) + delta)."""
    type = "RMSProp"
    uses_delta = True

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise self._error("Momentum cannot be used with RMSProp.")
        if not 0 <= self.param.rms_decay < 1:
            raise self._error(f"rms_decay should lie between 0 and 1, got "
                              f"{self.param.rms_decay}")

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, u = self._host_history(i), self._update(i)
        decay = F32(self.param.rms_decay)
        np.square(g, out=u)
        u *= F32(1) - decay
        h *= decay
        h += u
        np.sqrt(h, out=u)
        u += F32(self.param.delta)
        np.divide(g, u, out=u)
        np.multiply(u, self._local_rate(i, rate), out=g)

    gpu_kernel = "solver_rmsprop_update"

    def _gpu_constants(self, i, rate):
        return self.param.rms_decay, self.param.delta, self._local_rate(i, rate)


class AdaDeltaSolver(SGDSolver):
    """Zeiler's AdaDelta with `momentum` as the decay: running means of g^2
    (history[i]) and of the squared steps (history[N + i]);
    step = local_rate * g * sqrt((E[dx^2] + delta) / (E[g^2] + delta))."""
    type = "AdaDelta"
    uses_delta = True
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[i].diff
        grads, steps = self._host_history(i), self._host_history(n + i)
        u, t = self._update(i), self._temp(i)
        momentum = F32(self.param.momentum)
        keep = F32(1) - momentum
        np.square(g, out=u)
        grads *= momentum
        u *= keep
        grads += u
        t.fill(F32(self.param.delta))
        np.add(t, steps, out=u)
        t += grads
        np.divide(u, t, out=u)
        np.sqrt(u, out=u)
        g *= u
        np.square(g, out=u)
        steps *= momentum
        u *= keep
        steps += u
        g *= self._local_rate(i, rate)

    gpu_kernel = "solver_adadelta_update"

    def _gpu_constants(self, i, rate):
        return self.param.momentum, self.param.delta, self._local_rate(i, rate)


class AdamSolver(SGDSolver):
    """Adam: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2 (m in
    history[i], v in history[N + i]); step = local_rate * correction * m /
    (sqrt(v) + delta) with correction = sqrt(1 - beta2^t) / (1 - beta1^t),
    t = iter + 1; beta1 is `momentum`, beta2 `momentum2`."""
    type = "Adam"
    uses_delta = True
    history_sets = 2

    def _sanity_check(self):
        self._require(0 <= self.param.momentum2 < 1, "momentum2", "in [0, 1)")

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[i].diff
        m, v, t = self._host_history(i), self._host_history(n + i), self._temp(i)
        beta1, beta2 = F32(self.param.momentum), F32(self.param.momentum2)
        np.multiply(g, F32(1) - beta1, out=t)
        m *= beta1
        m += t
        np.multiply(g, g, out=t)
        t *= F32(1) - beta2
        v *= beta2
        v += t
        np.sqrt(v, out=t)
        t += F32(self.param.delta)
        np.divide(m, t, out=t)
        np.multiply(t, self._step_rate(i, rate), out=g)

    def _step_rate(self, i, rate):
        """local_rate times the bias correction sqrt(1 - beta2^t) / (1 - beta1^t)."""
        step = self.iter + 1
        beta1, beta2 = float(F32(self.param.momentum)), float(F32(self.param.momentum2))
        # Caffe evaluates the powers in double and stores the result as float.
        correction = F32(math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step))
        return self._local_rate(i, rate) * correction

    gpu_kernel = "solver_adam_update"

    def _gpu_constants(self, i, rate):
        return (self.param.momentum, self.param.momentum2, self.param.delta,
                self._step_rate(i, rate))


SOLVER_TYPES = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver,
                                          RMSPropSolver, AdaDeltaSolver, AdamSolver)}
