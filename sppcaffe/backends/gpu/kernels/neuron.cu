// Caffe's other elementwise layers (sppcaffe/layers/neuron.py).  Each
// formula is the host code's, in the same order of float operations.
// When a layer runs in place, `x` in a backward kernel is the copy of the
// input its forward kept, never the overwritten top.
#include "common.cuh"

extern "C" __global__ void absval_forward(int n, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = fabsf(x[i]); }
}

// Caffe's sign: 0 at 0.
extern "C" __global__ void absval_backward(int n, const float* dy, const float* x, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float sign = (float)((0.0f < x[i]) - (x[i] < 0.0f));
    dx[i] = sign * dy[i];
  }
}

// log(1 + e^x) written so that e^x never overflows.
extern "C" __global__ void bnll_forward(int n, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = fmaxf(x[i], 0.0f) + log1pf(expf(-fabsf(x[i]))); }
}

// Caffe's kBNLL_THRESHOLD (50) caps the exponent.
extern "C" __global__ void bnll_backward(int n, const float* dy, const float* x, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float e = expf(fminf(x[i], 50.0f));
    dx[i] = dy[i] * e / (e + 1.0f);
  }
}

extern "C" __global__ void clip_forward(int n, const float* x, float lo, float hi, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = fmaxf(lo, fminf(x[i], hi)); }
}

extern "C" __global__ void clip_backward(int n, const float* dy, const float* x, float lo,
                                         float hi, float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = dy[i] * (float)(x[i] >= lo && x[i] <= hi); }
}

extern "C" __global__ void elu_forward(int n, const float* x, float alpha, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] > 0.0f ? x[i] : alpha * (expf(x[i]) - 1.0f); }
}

// The slope below 0 is alpha e^x = y + alpha, read from the output.
extern "C" __global__ void elu_backward(int n, const float* dy, const float* x, const float* y,
                                        float alpha, float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * (y[i] + alpha); }
}

// y = outer * e^(inner x): base^(shift + scale x) with inner = scale ln(base), outer = base^shift.
extern "C" __global__ void exp_forward(int n, const float* x, float inner, float outer, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = expf(inner * x[i]) * outer; }
}

extern "C" __global__ void exp_backward(int n, const float* dy, const float* y, float inner,
                                        float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = y[i] * dy[i] * inner; }
}

// y = log_base(scale x + shift), base_scale = 1 / ln(base).
extern "C" __global__ void log_forward(int n, const float* x, float scale, float shift,
                                       float base_scale, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = logf(x[i] * scale + shift) * base_scale; }
}

// num_scale = scale / ln(base).
extern "C" __global__ void log_backward(int n, const float* dy, const float* x, float scale,
                                        float shift, float num_scale, float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = dy[i] * (1.0f / (x[i] * scale + shift) * num_scale); }
}

// y = (scale x + shift)^power; the constant case (power or scale 0) is a fill.
extern "C" __global__ void power_forward(int n, const float* x, float power, float scale,
                                         float shift, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const float base = x[i] * scale + shift;
    y[i] = power == 1.0f ? base : powf(base, power);
  }
}

// Caffe's three forms of dy/dx = diff_scale (scale x + shift)^(power - 1),
// diff_scale = power * scale; power 1 and diff_scale 0 are the host's.
extern "C" __global__ void power_backward(int n, const float* dy, const float* x, const float* y,
                                          float power, float scale, float shift,
                                          float diff_scale, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    float slope;
    if (power == 2.0f) {
      slope = x[i] * (diff_scale * scale) + diff_scale * shift;
    } else if (shift == 0.0f) {
      slope = y[i] / x[i] * power;
    } else {
      slope = y[i] / (x[i] * scale + shift) * diff_scale;
    }
    dx[i] = dy[i] * slope;
  }
}

// Slope index: the channel (axis 1 of num x channels x dim), or 0 when shared.
extern "C" __global__ void prelu_forward(int n, int channels, int dim, int shared, const float* x,
                                         const float* slope, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = shared ? 0 : (int)((i / dim) % channels);
    y[i] = x[i] > 0.0f ? x[i] : x[i] * slope[c];
  }
}

extern "C" __global__ void prelu_backward(int n, int channels, int dim, int shared,
                                          const float* dy, const float* x, const float* slope,
                                          float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const int c = shared ? 0 : (int)((i / dim) % channels);
    dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * slope[c];
  }
}

// terms[j] = sum over the batch of dy * min(x, 0) at position j of one
// image (j < channels * dim): a gather, so no two threads write one sum.
extern "C" __global__ void prelu_slope_terms(int image, int num, const float* dy, const float* x,
                                             float* terms) {
  CUDA_KERNEL_LOOP(j, image) {
    float sum = 0.0f;
    for (int b = 0; b < num; ++b) {
      const long long i = (long long)b * image + j;
      sum += x[i] <= 0.0f ? dy[i] * x[i] : 0.0f;
    }
    terms[j] = sum;
  }
}

// sig = sigmoid(beta x) in Caffe's tanh form, kept for the backward.
extern "C" __global__ void swish_forward(int n, const float* x, float beta, float* sig, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const float s = 0.5f * tanhf(0.5f * (x[i] * beta)) + 0.5f;
    sig[i] = s;
    y[i] = x[i] * s;
  }
}

// d(x sig(beta x))/dx = beta y + sig (1 - beta y): reads only y and sig.
extern "C" __global__ void swish_backward(int n, const float* dy, const float* y, const float* sig,
                                          float beta, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float by = beta * y[i];
    dx[i] = dy[i] * (by + sig[i] * (1.0f - by));
  }
}

extern "C" __global__ void threshold_forward(int n, const float* x, float threshold, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] > threshold ? 1.0f : 0.0f; }
}
