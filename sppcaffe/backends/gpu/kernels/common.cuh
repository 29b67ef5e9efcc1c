// Shared by every kernel file, for nvcc and for the g++ build (host_shim.h).
#pragma once
#include <cfloat>

// Grid-stride loop: correct for any launch size, so the CPU build runs
// each kernel once with a single "thread".
#define CUDA_KERNEL_LOOP(i, n)                                        \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
       i < (long long)(n); i += (long long)blockDim.x * gridDim.x)
