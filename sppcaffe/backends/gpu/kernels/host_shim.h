// Lets g++ compile the CUDA kernel sources for the CPU (tests on machines
// without a GPU).  One thread, one block: grid-stride loops then visit
// every index in order, so kernels must not rely on __syncthreads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct sppcaffe_dim3 { unsigned int x, y, z; };
static const sppcaffe_dim3 threadIdx = {0, 0, 0};
static const sppcaffe_dim3 blockIdx = {0, 0, 0};
static const sppcaffe_dim3 blockDim = {1, 1, 1};
static const sppcaffe_dim3 gridDim = {1, 1, 1};

using std::max;
using std::min;

// One thread: an atomic add is a plain add.
static inline float atomicAdd(float* address, float value) {
  float old = *address;
  *address = old + value;
  return old;
}

static inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
static inline unsigned int __float_as_uint(float x) { unsigned int i; std::memcpy(&i, &x, 4); return i; }
static inline float __uint_as_float(unsigned int i) { float x; std::memcpy(&x, &i, 4); return x; }
