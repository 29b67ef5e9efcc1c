// Reduction and ArgMax.
#include "common.cuh"

// Values of ReductionParameter.ReductionOp.
#define REDUCTION_SUM 1
#define REDUCTION_ASUM 2
#define REDUCTION_SUMSQ 3
#define REDUCTION_MEAN 4

// The terms ASUM and SUMSQ add up (|x| or x^2); the layer then sums each
// row of them with a gemv against ones, as it sums x itself for SUM/MEAN.
extern "C" __global__ void reduction_terms(int n, int op, const float* x, float* terms) {
  CUDA_KERNEL_LOOP(i, n) {
    const float v = x[i];
    terms[i] = op == REDUCTION_ASUM ? fabsf(v) : v * v;
  }
}

// d(bottom) for rows of `dim` elements: row r's top gradient times coeff,
// then times 1 (SUM, MEAN; coeff already holds MEAN's 1/dim), sign(x)
// (ASUM, with sign(0) = 0) or 2x (SUMSQ).  x is only read for ASUM/SUMSQ.
extern "C" __global__ void reduction_backward(int n, int dim, int op, float coeff,
                                              const float* x, const float* dy, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float c = dy[i / dim] * coeff;
    if (op == REDUCTION_ASUM) {
      const float v = x[i];
      dx[i] = (float)((0.f < v) - (v < 0.f)) * c;
    } else if (op == REDUCTION_SUMSQ) {
      dx[i] = (2.f * c) * x[i];
    } else {
      dx[i] = c;
    }
  }
}

// ArgMax: one thread per searched row.  Row i holds `dim` values
// `stride` apart, starting at (i / stride) * dim * stride + i % stride.
// The k-th pick is the largest (value, index) pair below the previous
// pick in Caffe's order (std::greater on pairs: a larger value first, on a
// tie the larger index), so ties resolve as Caffe's partial_sort does and
// no per-row scratch is needed; top_k is small.
// Output as Caffe's: along the axis (`by_axis`) the picks replace the
// searched axis (indices, or values with out_max_val); without an axis,
// row i writes top_k indices, then top_k values when out_max_val.
extern "C" __global__ void argmax_forward(int num, int dim, int stride, int top_k,
                                          int out_max_val, int by_axis, const float* x,
                                          float* y) {
  CUDA_KERNEL_LOOP(i, num) {
    const long long outer = i / stride;
    const long long inner = i - outer * stride;
    const float* row = x + outer * dim * stride + inner;
    float last_value = 0.f;
    int last_index = -1;            // no pick yet
    for (int j = 0; j < top_k; ++j) {
      float best_value = 0.f;
      int best_index = -1;
      for (int k = 0; k < dim; ++k) {
        const float v = row[(long long)k * stride];
        const bool below = last_index < 0 || v < last_value ||
                           (v == last_value && k < last_index);
        const bool above = best_index < 0 || v > best_value ||
                           (v == best_value && k > best_index);
        if (below && above) {
          best_value = v;
          best_index = k;
        }
      }
      if (by_axis) {
        y[(outer * top_k + j) * stride + inner] = out_max_val ? best_value : (float)best_index;
      } else if (out_max_val) {
        y[2 * i * top_k + j] = (float)best_index;
        y[2 * i * top_k + top_k + j] = best_value;
      } else {
        y[i * top_k + j] = (float)best_index;
      }
      last_value = best_value;
      last_index = best_index;
    }
  }
}
