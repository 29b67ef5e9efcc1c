// Scale and Bias: an operand of `dim` values broadcast over the outer and
// inner axes of x, element i taking operand[(i / inner) % dim].  BatchNorm
// (dim = channels, inner = spatial size) and MVN (dim = rows, inner = row
// length) normalise with the same kernels.  Every element is written by
// its own index only, so in place (y is x) is safe.
#include "common.cuh"

__device__ __forceinline__ int broadcast_index(long long i, int dim, int inner) {
  return (int)((i / inner) % dim);
}

extern "C" __global__ void scale_forward(int n, const float* x, const float* scale, int dim,
                                         int inner, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] * scale[broadcast_index(i, dim, inner)]; }
}

// y = x + alpha * bias; alpha is 1 (Bias) or -1 (subtracting a mean).
extern "C" __global__ void bias_forward(int n, const float* x, const float* bias, float alpha,
                                        int dim, int inner, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] + alpha * bias[broadcast_index(i, dim, inner)]; }
}

// A division, not a product with the reciprocal: the normalising layers
// divide by their standard deviation, as Caffe's caffe_div does.
extern "C" __global__ void scale_divide(int n, const float* x, const float* divisor, int dim,
                                        int inner, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = x[i] / divisor[broadcast_index(i, dim, inner)]; }
}
