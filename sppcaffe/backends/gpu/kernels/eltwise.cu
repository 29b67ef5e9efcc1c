// Eltwise layer (PROD, SUM with coefficients, MAX with its argmax mask).
// The operations and their order follow the host code in
// sppcaffe/layers/structure.py, so both give the same floats.
#include "common.cuh"

extern "C" __global__ void eltwise_mul(int n, const float* a, const float* b, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = a[i] * b[i]; }
}

extern "C" __global__ void eltwise_div(int n, const float* a, const float* b, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = a[i] / b[i]; }
}

extern "C" __global__ void eltwise_scale(int n, const float* x, float alpha, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] * alpha; }
}

// MAX over the first two bottoms: bottom 1 wins a tie (Caffe's CPU rule).
extern "C" __global__ void eltwise_max_first(int n, const float* a, const float* b, float* y,
                                             int* mask) {
  CUDA_KERNEL_LOOP(i, n) {
    const bool first = a[i] > b[i];
    y[i] = first ? a[i] : b[i];
    mask[i] = first ? 0 : 1;
  }
}

// MAX with bottom `index` >= 2: it takes over only when strictly greater
// (Caffe's CPU rule; its GPU kernel lets later bottoms win ties).
extern "C" __global__ void eltwise_max_next(int n, const float* x, int index, float* y,
                                            int* mask) {
  CUDA_KERNEL_LOOP(i, n) {
    if (x[i] > y[i]) {
      y[i] = x[i];
      mask[i] = index;
    }
  }
}

extern "C" __global__ void eltwise_max_backward(int n, const float* dy, const int* mask,
                                                int index, float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = mask[i] == index ? dy[i] : 0.0f; }
}
