// Elementwise activations (ReLU, Sigmoid, TanH); in place is allowed.
#include "common.cuh"

extern "C" __global__ void relu_forward(int n, const float* x, float* y, float negative_slope) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] > 0 ? x[i] : x[i] * negative_slope; }
}

// x is the bottom data (the top data when in place: same sign).
extern "C" __global__ void relu_backward(int n, const float* dy, const float* x, float* dx,
                                         float negative_slope) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = dy[i] * (x[i] > 0 ? 1.0f : negative_slope); }
}

// Caffe's form 0.5 * tanh(0.5 x) + 0.5: never overflows, unlike 1 / (1 + exp(-x)).
extern "C" __global__ void sigmoid_forward(int n, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = 0.5f * tanhf(0.5f * x[i]) + 0.5f; }
}

// Reads only the top data, so in place (dx is dy) is safe.
extern "C" __global__ void sigmoid_backward(int n, const float* dy, const float* y, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float s = y[i];
    dx[i] = dy[i] * s * (1.0f - s);
  }
}

extern "C" __global__ void tanh_forward(int n, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = tanhf(x[i]); }
}

extern "C" __global__ void tanh_backward(int n, const float* dy, const float* y, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float t = y[i];
    dx[i] = dy[i] * (1.0f - t * t);
  }
}
