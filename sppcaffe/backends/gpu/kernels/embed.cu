// Embed: rows of a (input_dim x num_output) table picked by integer indices
// held as floats.  The indices were checked on the host (integral, in
// range); the test here (labels.cuh: in float before the cast, so NaN is
// no row on any platform) only keeps a stale index from touching memory
// outside the table.
#include "common.cuh"
#include "labels.cuh"

// top[m, d] = weight[index[m], d]
extern "C" __global__ void embed_forward(int n, int num_output, int input_dim,
                                         const float* indices, const float* weight, float* top) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long m = i / num_output;
    const int d = (int)(i % num_output);
    const int index = label_class(indices[m], input_dim, 0, 0);
    top[i] = index >= 0 ? weight[(long long)index * num_output + d] : 0.0f;
  }
}

// weight_diff[index[m], d] += top_diff[m, d]: a repeated index is a scatter
// onto the same row, so the adds are atomic (Caffe's EmbedBackward does so).
// atomic-accumulating: a repeated index's sum runs in launch order, which
// varies on a GPU (last bits only).
extern "C" __global__ void embed_backward(int n, int num_output, int input_dim,
                                          const float* indices, const float* top_diff,
                                          float* weight_diff) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long m = i / num_output;
    const int d = (int)(i % num_output);
    const int index = label_class(indices[m], input_dim, 0, 0);
    if (index >= 0) {
      atomicAdd(weight_diff + (long long)index * num_output + d, top_diff[i]);
    }
  }
}
