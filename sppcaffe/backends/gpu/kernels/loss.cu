// Loss layers and Accuracy.  Each writes per-position terms, the layer
// sums them on the device (a gemv with a ones vector) and loss_normalize
// turns the sums into the top: no value travels to the host, and the loss
// weight is read from the top's diff where the net put it.
// Labels are floats holding class indices, truncated as Caffe's
// static_cast<int> once labels.cuh has checked them in float.  A label that
// names no class (NaN, out of range) cannot raise an error here, as the host
// code does; it makes its terms NaN, so the loss shows it, instead of
// reading out of bounds or passing for class 0.
#include "common.cuh"
#include "labels.cuh"

static __device__ __forceinline__ float loss_nan() { return __int_as_float(0x7fc00000); }

// Per position (outer, inner): loss = -log(max(prob of the label, FLT_MIN))
// into terms[position] and 1 (labelled) or 0 (ignored) into
// terms[positions + position] (Caffe's SoftmaxLossForwardGPU).
extern "C" __global__ void softmax_loss_forward(int positions, int channels, int inner,
                                                const float* prob, const float* label,
                                                int has_ignore, int ignore_label, float* terms) {
  CUDA_KERNEL_LOOP(index, positions) {
    const int l = label_class(label[index], channels, has_ignore, ignore_label);
    float loss = 0.0f, counted = 0.0f;
    if (l != LABEL_IGNORED) {
      counted = 1.0f;
      if (l == LABEL_INVALID) {
        loss = loss_nan();
      } else {
        const long long at = (index / inner) * channels * inner + (long long)l * inner + index % inner;
        loss = -logf(fmaxf(prob[at], FLT_MIN));
      }
    }
    terms[index] = loss;
    terms[positions + index] = counted;
  }
}

// top = sums[0] / normalizer, where the normalizer is sums[1] (a count
// on the device) when use_count, else fixed_normalizer; at least 1, so
// that all-ignored labels give 0.  Its inverse is kept for backward.
// One thread (launch with count 1).
extern "C" __global__ void loss_normalize(int n, const float* sums, int use_count,
                                          float fixed_normalizer, float* top,
                                          float* inv_normalizer) {
  CUDA_KERNEL_LOOP(i, n) {
    const float normalizer = fmaxf(1.0f, use_count ? sums[1] : fixed_normalizer);
    top[0] = sums[0] / normalizer;
    inv_normalizer[0] = 1.0f / normalizer;
  }
}

// dx = (prob - onehot(label)) * loss_weight / normalizer; 0 at ignored
// positions.  One thread per element of dx, fusing Caffe's copy, per
// position subtract and scal.
extern "C" __global__ void softmax_loss_backward(int count, int channels, int inner,
                                                 const float* prob, const float* label,
                                                 int has_ignore, int ignore_label,
                                                 const float* loss_weight,
                                                 const float* inv_normalizer, float* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long position = (i / ((long long)channels * inner)) * inner + i % inner;
    const int c = (int)((i / inner) % channels);
    const int l = label_class(label[position], channels, has_ignore, ignore_label);
    float g;
    if (l == LABEL_IGNORED) {
      g = 0.0f;
    } else if (l == LABEL_INVALID) {
      g = loss_nan();
    } else {
      g = (prob[i] - (c == l ? 1.0f : 0.0f)) * (loss_weight[0] * inv_normalizer[0]);
    }
    dx[i] = g;
  }
}

// diff = a - b (kept for backward) and its square (summed into the loss).
extern "C" __global__ void euclidean_loss_forward(int n, const float* a, const float* b,
                                                  float* diff, float* squared) {
  CUDA_KERNEL_LOOP(i, n) {
    const float d = a[i] - b[i];
    diff[i] = d;
    squared[i] = d * d;
  }
}

// dx = diff * loss_weight * factor, factor = +-1 / num.
extern "C" __global__ void euclidean_loss_backward(int n, const float* diff,
                                                   const float* loss_weight, float factor,
                                                   float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = diff[i] * (loss_weight[0] * factor); }
}

// Per position: hit (the true class is among the top_k scores, a tie
// counting against it) into terms[position], labelled (1) or ignored (0)
// into terms[positions + position] (Caffe's AccuracyForwardGPU).
extern "C" __global__ void accuracy_forward(int positions, int channels, int inner,
                                            const float* scores, const float* label, int top_k,
                                            int has_ignore, int ignore_label, float* terms) {
  CUDA_KERNEL_LOOP(index, positions) {
    const int l = label_class(label[index], channels, has_ignore, ignore_label);
    float hit = 0.0f, counted = 0.0f;
    if (l != LABEL_IGNORED) {
      counted = 1.0f;
      if (l == LABEL_INVALID) {
        hit = loss_nan();
      } else {
        const float* s = scores + (index / inner) * channels * inner + index % inner;
        const float truth = s[(long long)l * inner];
        int rivals = -1;   // the true class scores >= itself
        for (int c = 0; c < channels && rivals < top_k; ++c) rivals += s[(long long)c * inner] >= truth;
        hit = rivals < top_k ? 1.0f : 0.0f;
      }
    }
    terms[index] = hit;
    terms[positions + index] = counted;
  }
}

// Per-class accuracy in two deterministic steps, each thread walking about
// sqrt(positions) items instead of one thread per class walking them all
// (millions for a segmentation output).  partials holds two (classes x
// chunks) int tables: the hits, then the labelled positions, of each class
// within each chunk; chunk t is the positions t, t + chunks, t + 2 chunks,
// ... (neighbouring threads read neighbouring labels).  Integer counts are
// exact, and each thread owns its cells: no atomics, no order to vary.
// hit: accuracy_forward's terms[position] (1 or 0 for a labelled position).
extern "C" __global__ void accuracy_class_partials(int chunks, int positions, int classes,
                                                   const float* label, int has_ignore,
                                                   int ignore_label, const float* terms,
                                                   int* partials) {
  CUDA_KERNEL_LOOP(t, chunks) {
    int* hits = partials + t;
    int* totals = partials + (long long)classes * chunks + t;
    for (int c = 0; c < classes; ++c) {
      hits[(long long)c * chunks] = 0;
      totals[(long long)c * chunks] = 0;
    }
    for (long long p = t; p < positions; p += chunks) {
      const int c = label_class(label[p], classes, has_ignore, ignore_label);
      if (c >= 0) {
        totals[(long long)c * chunks] += 1;
        hits[(long long)c * chunks] += terms[p] > 0.5f;
      }
    }
  }
}

// Per class: hits / labelled positions over all chunks (0 for a class never
// seen), divided in float as the host code divides its float32 counts.
extern "C" __global__ void accuracy_per_class(int classes, int chunks, const int* partials,
                                              float* per_class) {
  CUDA_KERNEL_LOOP(c, classes) {
    const int* hits = partials + c * chunks;
    const int* totals = partials + ((long long)classes + c) * chunks;
    long long hit = 0, total = 0;
    for (int t = 0; t < chunks; ++t) {
      hit += hits[t];
      total += totals[t];
    }
    per_class[c] = total > 0 ? (float)hit / (float)total : 0.0f;
  }
}
