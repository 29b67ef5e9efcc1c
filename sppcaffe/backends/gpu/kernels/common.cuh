// Shared by every kernel file, for nvcc and for the g++ build (host_shim.h).
#pragma once
#include <cfloat>

// Grid-stride loop: correct for any launch size.  The g++ build's emulated
// variant (host_shim.h, SPPCAFFE_EMULATE) defines its own, which visits a
// simulated thread's indices in a chosen order.
#ifndef CUDA_KERNEL_LOOP
#define CUDA_KERNEL_LOOP(i, n)                                        \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
       i < (long long)(n); i += (long long)blockDim.x * gridDim.x)
#endif
