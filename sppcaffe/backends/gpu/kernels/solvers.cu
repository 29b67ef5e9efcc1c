// The solvers' per-element work (Caffe's src/caffe/solvers/*.cu), one
// thread per learnable value.  g is the param's diff: it comes in as the
// gradient and leaves as the step that `data -= diff` applies.  Each
// kernel does the host code's float32 operations (sppcaffe/solvers/
// updates.py) in the same order, so the two agree to rounding.
#include "common.cuh"

// L1 weight decay: g += decay * sign(w).
extern "C" __global__ void solver_l1_decay(int n, const float* w, float decay, float* g) {
  CUDA_KERNEL_LOOP(i, n) {
    const float sign = (w[i] > 0.0f) - (w[i] < 0.0f);
    g[i] += sign * decay;
  }
}

// SGD: h = momentum * h + local_rate * g; step = h.
extern "C" __global__ void solver_sgd_update(int n, float* g, float* h, float momentum,
                                             float local_rate) {
  CUDA_KERNEL_LOOP(i, n) {
    const float scaled = g[i] * local_rate;
    g[i] = h[i] = h[i] * momentum + scaled;
  }
}

// Nesterov: the history as SGD's; step = (1 + momentum) h_new - momentum h_old.
extern "C" __global__ void solver_nesterov_update(int n, float* g, float* h, float momentum,
                                                  float local_rate) {
  CUDA_KERNEL_LOOP(i, n) {
    const float previous = h[i];
    const float scaled = g[i] * local_rate;
    const float current = h[i] = previous * momentum + scaled;
    g[i] = previous * -momentum + current * (1.0f + momentum);
  }
}

// AdaGrad: h += g^2; step = local_rate * g / (sqrt(h) + delta).
extern "C" __global__ void solver_adagrad_update(int n, float* g, float* h, float delta,
                                                 float local_rate) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = g[i];
    const float hi = h[i] = h[i] + gi * gi;
    g[i] = (gi / (sqrtf(hi) + delta)) * local_rate;
  }
}

// RMSProp: h = rms_decay h + (1 - rms_decay) g^2; step as AdaGrad's.
extern "C" __global__ void solver_rmsprop_update(int n, float* g, float* h, float rms_decay,
                                                 float delta, float local_rate) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = g[i];
    const float hi = h[i] = h[i] * rms_decay + (gi * gi) * (1.0f - rms_decay);
    g[i] = (gi / (sqrtf(hi) + delta)) * local_rate;
  }
}

// AdaDelta: running means of g^2 (grads) and of squared steps (steps) with
// `momentum` as the decay; step = local_rate * g * sqrt((steps + delta) /
// (grads + delta)), the steps' mean updated before the rate is applied.
extern "C" __global__ void solver_adadelta_update(int n, float* g, float* grads, float* steps,
                                                  float momentum, float delta, float local_rate) {
  CUDA_KERNEL_LOOP(i, n) {
    const float keep = 1.0f - momentum;
    const float gi = g[i];
    const float gr = grads[i] = grads[i] * momentum + (gi * gi) * keep;
    const float step = gi * sqrtf((delta + steps[i]) / (delta + gr));
    steps[i] = steps[i] * momentum + (step * step) * keep;
    g[i] = step * local_rate;
  }
}

// Adam: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2;
// step = rate * m / (sqrt(v) + delta), `rate` already holding the bias
// correction.
extern "C" __global__ void solver_adam_update(int n, float* g, float* m, float* v, float beta1,
                                              float beta2, float delta, float rate) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = g[i];
    const float mi = m[i] = m[i] * beta1 + gi * (1.0f - beta1);
    const float vi = v[i] = v[i] * beta2 + (gi * gi) * (1.0f - beta2);
    g[i] = (mi / (sqrtf(vi) + delta)) * rate;
  }
}
