// Embed: rows of a (input_dim x num_output) table picked by integer indices
// held as floats.  The indices were checked on the host (integral, in
// range); the bound test here only keeps a stale index from touching memory
// outside the table.
#include "common.cuh"

// top[m, d] = weight[index[m], d]
extern "C" __global__ void embed_forward(int n, int num_output, int input_dim,
                                         const float* indices, const float* weight, float* top) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long m = i / num_output;
    const int d = (int)(i % num_output);
    const int index = (int)indices[m];
    top[i] = (index >= 0 && index < input_dim) ? weight[(long long)index * num_output + d] : 0.0f;
  }
}

// weight_diff[index[m], d] += top_diff[m, d]: a repeated index is a scatter
// onto the same row, so the adds are atomic (Caffe's EmbedBackward does so).
extern "C" __global__ void embed_backward(int n, int num_output, int input_dim,
                                          const float* indices, const float* top_diff,
                                          float* weight_diff) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long m = i / num_output;
    const int d = (int)(i % num_output);
    const int index = (int)indices[m];
    if (index >= 0 && index < input_dim) {
      atomicAdd(weight_diff + (long long)index * num_output + d, top_diff[i]);
    }
  }
}
