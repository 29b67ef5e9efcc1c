"""The six update rules (Caffe's sgd_solvers.hpp and src/caffe/solvers/).

Every rule shares SGDSolver's ApplyUpdate: the rate from the lr policy,
gradient clipping (global L2 norm, before anything else), then per
learnable param: divide by iter_size, add weight decay (L2: decay * w, L1:
decay * sign(w); decay = weight_decay * decay_mult), turn the gradient
into the step with the rule (local_rate = rate * lr_mult), and finally
``data -= diff``.

The buffers are Caffe's: `history` is what snapshots save (one blob per
param; AdaDelta and Adam append a second set), `update` and `temp` are
scratch.  All arithmetic is float32 and in place, in Caffe's order.
"""
import logging
import math

import numpy as np

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
        self.history = [np.zeros(p.shape, F32) for _ in range(self.history_sets)
                        for p in params]
        self.update = [np.zeros(p.shape, F32) for p in params]
        self.temp = [np.zeros(p.shape, F32) for p in params]

    def get_learning_rate(self):
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step,
                                                self.source)
        return rate

    def apply_update(self):
        """Caffe's SGDSolver::ApplyUpdate; counts the iteration."""
        rate = self.get_learning_rate()
        self._announce_rate(rate)
        self._clip_gradients()
        params = self.net.learnable_params
        for i in range(len(params)):
            self._normalize(i)
            self._regularize(i)
            self.compute_update_value(i, rate)
        for p in params:
            p.data -= p.diff
        self.iter += 1

    def _clip_gradients(self):
        clip = F32(self.param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = F32(0)
        for p in params:
            d = p.diff.ravel()
            sumsq += F32(np.dot(d, d))
        norm = F32(np.sqrt(sumsq))
        if norm > clip:
            scale = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                     "factor %g", norm, clip, scale)
            for p in params:
                p.diff *= scale

    def _normalize(self, i):
        """Gradients were summed over iter_size passes: make them a mean."""
        if self.param.iter_size == 1:
            return
        self.net.learnable_params[i].diff *= F32(1) / F32(self.param.iter_size)

    def _regularize(self, i):
        decay = F32(self.param.weight_decay) * F32(self.net.params_weight_decay[i])
        if not decay:
            return
        p, scratch = self.net.learnable_params[i], self.temp[i]
        kind = self.param.regularization_type
        if kind == "L2":
            np.multiply(p.data, decay, out=scratch)
        elif kind == "L1":
            np.sign(p.data, out=scratch)
            scratch *= decay
        else:
            raise self._error(f"unknown regularization_type '{kind}' (known: L1, L2)")
        p.diff += scratch

    def _local_rate(self, i, rate):
        return F32(rate) * F32(self.net.params_lr[i])

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, scaled = self.history[i], self.update[i]
        np.multiply(g, self._local_rate(i, rate), out=scaled)
        h *= F32(self.param.momentum)
        h += scaled
        g[...] = h


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: the history as SGD's, the step
    (1 + momentum) * history_new - momentum * history_old."""
    type = "Nesterov"

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, previous, scratch = self.history[i], self.update[i], self.temp[i]
        momentum = F32(self.param.momentum)
        previous[...] = h
        np.multiply(g, self._local_rate(i, rate), out=scratch)
        h *= momentum
        h += scratch
        np.multiply(h, F32(1) + momentum, out=scratch)
        previous *= -momentum
        previous += scratch
        g[...] = previous


class AdaGradSolver(SGDSolver):
    """history += g^2; step = local_rate * g / (sqrt(history) + delta)."""
    type = "AdaGrad"

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise self._error("Momentum cannot be used with AdaGrad.")

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, u = self.history[i], self.update[i]
        np.square(g, out=u)
        h += u
        np.sqrt(h, out=u)
        u += F32(self.param.delta)
        np.divide(g, u, out=u)
        np.multiply(u, self._local_rate(i, rate), out=g)


class RMSPropSolver(SGDSolver):
    """history = rms_decay * history + (1 - rms_decay) * g^2;
    step = local_rate * g / (sqrt(history) + delta)."""
    type = "RMSProp"

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise self._error("Momentum cannot be used with RMSProp.")
        if not 0 <= self.param.rms_decay < 1:
            raise self._error(f"rms_decay should lie between 0 and 1, got "
                              f"{self.param.rms_decay}")

    def compute_update_value(self, i, rate):
        g = self.net.learnable_params[i].diff
        h, u = self.history[i], self.update[i]
        decay = F32(self.param.rms_decay)
        np.square(g, out=u)
        u *= F32(1) - decay
        h *= decay
        h += u
        np.sqrt(h, out=u)
        u += F32(self.param.delta)
        np.divide(g, u, out=u)
        np.multiply(u, self._local_rate(i, rate), out=g)


class AdaDeltaSolver(SGDSolver):
    """Zeiler's AdaDelta with `momentum` as the decay: running means of g^2
    (history[i]) and of the squared steps (history[N + i]);
    step = local_rate * g * sqrt((E[dx^2] + delta) / (E[g^2] + delta))."""
    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[i].diff
        grads, steps = self.history[i], self.history[n + i]
        u, t = self.update[i], self.temp[i]
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


class AdamSolver(SGDSolver):
    """Adam: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2 (m in
    history[i], v in history[N + i]); step = local_rate * correction * m /
    (sqrt(v) + delta) with correction = sqrt(1 - beta2^t) / (1 - beta1^t),
    t = iter + 1; beta1 is `momentum`, beta2 `momentum2`."""
    type = "Adam"
    history_sets = 2

    def compute_update_value(self, i, rate):
        n = len(self.net.learnable_params)
        g = self.net.learnable_params[i].diff
        m, v, t = self.history[i], self.history[n + i], self.temp[i]
        beta1, beta2 = F32(self.param.momentum), F32(self.param.momentum2)
        step = self.iter + 1
        # Caffe evaluates the powers in double and stores the result as float.
        correction = F32(math.sqrt(1.0 - float(beta2) ** step) / (1.0 - float(beta1) ** step))
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
        np.multiply(t, self._local_rate(i, rate) * correction, out=g)


SOLVER_TYPES = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver,
                                          RMSPropSolver, AdaDeltaSolver, AdamSolver)}
