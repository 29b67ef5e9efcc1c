// Filling device memory: a constant (Caffe's caffe_gpu_set) and random
// values from a counter-based generator.  Value i is a hash of (seed,
// offset + i) alone, so any launch shape -- a GPU grid or the single host
// "thread" -- gives the same numbers, and a long fill can be split into
// launches by advancing `offset`.
#include "common.cuh"

// SplitMix64's output function: a bijective 64-bit mixer.
static __device__ __forceinline__ unsigned long long fill_mix(unsigned long long x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// 64 random bits for counter `k` of the stream `seed`.
static __device__ __forceinline__ unsigned long long fill_bits(unsigned long long seed,
                                                              unsigned long long k) {
  return fill_mix(fill_mix(seed) + (k + 1ULL) * 0x9E3779B97F4A7C15ULL);
}

// 24 random bits as a float in [0, 1): exact in float32.
static __device__ __forceinline__ float fill_unit(unsigned long long bits) {
  return (float)(bits & 0xFFFFFFULL) * (1.0f / 16777216.0f);
}

extern "C" __global__ void fill_constant(int n, float value, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = value; }
}

// Uniform in [low, high).
extern "C" __global__ void fill_uniform(int n, float low, float high, unsigned long long seed,
                                        unsigned long long offset, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const float u = fill_unit(fill_bits(seed, offset + (unsigned long long)i) >> 40);
    y[i] = u * (high - low) + low;
  }
}

// Normal(mean, std) by Box-Muller on two 24-bit uniforms of one draw
// (the first moved to (0, 1] so that its log is finite).
extern "C" __global__ void fill_gaussian(int n, float mean, float std, unsigned long long seed,
                                         unsigned long long offset, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const unsigned long long bits = fill_bits(seed, offset + (unsigned long long)i);
    const float u1 = 1.0f - fill_unit(bits >> 40);
    const float u2 = fill_unit(bits >> 8);
    const float z = sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
    y[i] = z * std + mean;
  }
}

// 32 random bits per element (Caffe's caffe_gpu_rng_uniform on unsigned
// ints, e.g. for Dropout masks: keep where bits > threshold).
extern "C" __global__ void fill_random_bits(int n, unsigned long long seed,
                                            unsigned long long offset, unsigned int* y) {
  CUDA_KERNEL_LOOP(i, n) {
    y[i] = (unsigned int)(fill_bits(seed, offset + (unsigned long long)i) >> 32);
  }
}
