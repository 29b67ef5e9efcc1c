// Strided block copies: Concat (and any layer that gathers or scatters
// equal blocks along one axis), as Caffe's concat.cu.
#include "common.cuh"

// dst holds `n / block` blocks of `block` contiguous floats, block b at
// dst + b * dst_stride; block b of src starts at src + b * src_stride.
// Concat forward gathers a bottom into its slice of the top (dst_stride
// is the top's row), backward scatters the slice back (src_stride is).
// One thread per copied element, consecutive threads on consecutive
// addresses of both sides.
extern "C" __global__ void copy_blocks(int n, int block, const float* src, int src_stride,
                                       float* dst, int dst_stride) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long b = i / block;
    const long long k = i - b * block;
    dst[b * dst_stride + k] = src[b * src_stride + k];
  }
}
