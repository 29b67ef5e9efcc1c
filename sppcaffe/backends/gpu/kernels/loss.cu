// Loss layers and Accuracy.  Each writes per-position terms, the layer
// sums them on the device (a gemv with a ones vector) and loss_normalize
// turns the sums into the top: no value travels to the host, and the loss
// weight is read from the top's diff where the net put it.
// Labels are floats holding class indices, truncated as Caffe's
// static_cast<int>.  An out-of-range label cannot raise an error here; it
// makes its terms NaN, so the loss shows it, instead of reading out of
// bounds.
#include "common.cuh"

static __device__ __forceinline__ float loss_nan() { return __int_as_float(0x7fc00000); }

// Per position (outer, inner): loss = -log(max(prob of the label, FLT_MIN))
// into terms[position] and 1 (labelled) or 0 (ignored) into
// terms[positions + position] (Caffe's SoftmaxLossForwardGPU).
extern "C" __global__ void softmax_loss_forward(int positions, int channels, int inner,
                                                const float* prob, const float* label,
                                                int has_ignore, int ignore_label, float* terms) {
  CUDA_KERNEL_LOOP(index, positions) {
    const int l = (int)label[index];
    float loss = 0.0f, counted = 0.0f;
    if (!(has_ignore && l == ignore_label)) {
      counted = 1.0f;
      if (l < 0 || l >= channels) {
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
    const int l = (int)label[position];
    float g;
    if (has_ignore && l == ignore_label) {
      g = 0.0f;
    } else if (l < 0 || l >= channels) {
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
    const int l = (int)label[index];
    float hit = 0.0f, counted = 0.0f;
    if (!(has_ignore && l == ignore_label)) {
      counted = 1.0f;
      if (l < 0 || l >= channels) {
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

// Per class: hits / labelled positions of that class (0 for a class never
// seen), from accuracy_forward's terms.  One thread per class gathering
// over the positions: deterministic, no atomics.
extern "C" __global__ void accuracy_per_class(int classes, int positions, const float* label,
                                              const float* terms, float* per_class) {
  CUDA_KERNEL_LOOP(c, classes) {
    float hits = 0.0f, total = 0.0f;
    for (int p = 0; p < positions; ++p) {
      if ((int)label[p] == c) {
        hits += terms[p];
        total += terms[positions + p];
      }
    }
    per_class[c] = total > 0.0f ? hits / total : 0.0f;
  }
}
