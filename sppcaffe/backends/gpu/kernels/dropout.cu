// Dropout with a counter-based mask: the random bits of element i are a
// hash of (seed, i), so no mask is stored, backward recomputes the very
// mask forward used, and every build (nvcc, the g++ host build, any
// launch size) draws the same mask for the same seed.
#include "common.cuh"

// SplitMix64's finaliser over a Weyl sequence: consecutive indices give
// statistically independent 64-bit outputs (it passes BigCrush as a
// generator); the high 32 bits are the draw.
static __device__ __forceinline__ unsigned int dropout_bits(unsigned long long seed, long long i) {
  unsigned long long z = seed + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return (unsigned int)(z >> 32);
}

// Caffe's rule: a unit is kept when its draw exceeds threshold =
// UINT_MAX * dropout_ratio, and kept units are scaled by 1 / (1 - ratio).
extern "C" __global__ void dropout_forward(int n, const float* x, float* y, unsigned long long seed,
                                           unsigned int threshold, float scale) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = dropout_bits(seed, i) > threshold ? x[i] * scale : 0.0f; }
}

extern "C" __global__ void dropout_backward(int n, const float* dy, float* dx, unsigned long long seed,
                                            unsigned int threshold, float scale) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = dropout_bits(seed, i) > threshold ? dy[i] * scale : 0.0f; }
}
