// Crop: a window of an N-d blob (Caffe's crop_layer.cu).
//
// `table` holds three rows of num_axes ints: the top (window) shape, the
// bottom shape and the window's offset in the bottom, axis 0 first; blobs
// are row-major.  Indices run past 32 bits only in the long long sums.
#include "common.cuh"

// One thread per top element gathers it from the bottom.
extern "C" __global__ void crop_forward(int count, const float* bottom, int num_axes,
                                        const int* table, float* top) {
  CUDA_KERNEL_LOOP(index, count) {
    long long rest = index;
    long long source = 0;
    long long stride = 1;
    for (int a = num_axes - 1; a >= 0; --a) {
      const int size = table[a];
      source += (rest % size + table[2 * num_axes + a]) * stride;
      rest /= size;
      stride *= table[num_axes + a];
    }
    top[index] = bottom[source];
  }
}

// The adjoint, as a gather too: one thread per bottom element takes its
// top gradient inside the window and 0 outside, so every element of the
// bottom diff is written once and nothing races.
extern "C" __global__ void crop_backward(int count, const float* top_diff, int num_axes,
                                         const int* table, float* bottom_diff) {
  CUDA_KERNEL_LOOP(index, count) {
    long long rest = index;
    long long source = 0;
    long long stride = 1;
    bool inside = true;
    for (int a = num_axes - 1; a >= 0; --a) {
      const int kept = table[a];
      const int size = table[num_axes + a];
      const long long at = rest % size - table[2 * num_axes + a];
      rest /= size;
      inside = inside && at >= 0 && at < kept;
      source += at * stride;
      stride *= kept;
    }
    bottom_diff[index] = inside ? top_diff[source] : 0.0f;
  }
}
