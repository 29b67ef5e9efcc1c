// SigmoidCrossEntropyLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss,
// ContrastiveLoss and Fast R-CNN's SmoothL1Loss.  As in loss.cu, forward
// kernels write per-item terms that the layer sums on the device (a gemv
// with a ones vector) and loss.cu's loss_normalize turns into the top;
// backward kernels read the loss weight from the top's diff.  Labels are
// floats holding class indices, truncated as Caffe's static_cast<int> once
// labels.cuh has checked them in float; a label naming no class (NaN, out
// of range) cannot raise an error here, as the host code does, so it makes
// its terms NaN instead of reading out of bounds or passing for class 0.
#include "common.cuh"
#include "labels.cuh"

// Caffe's kLOG_THRESHOLD: probabilities are clamped to it before the log.
#define LOSS_LOG_THRESHOLD 1e-20f

static __device__ __forceinline__ float bad_label_nan() { return __int_as_float(0x7fc00000); }

static __device__ __forceinline__ float sign_of(float x) {
  return (float)((0.0f < x) - (x < 0.0f));
}

// Whether a target equals ignore_label, compared as the host compares it (a
// NaN target is never ignored: its loss is NaN).
static __device__ __forceinline__ bool target_ignored(float target, int has_ignore,
                                                      int ignore_label) {
  int label;
  return has_ignore && label_to_int(target, &label) && label == ignore_label;
}

// ---- SigmoidCrossEntropyLoss ---------------------------------------------------
// Per element: the cross entropy of sigmoid(x) against the target, in the
// form that never overflows, max(x, 0) - x t + log(1 + exp(-|x|)), into
// terms[i]; 1 (counted) or 0 (ignored target) into terms[n + i].
extern "C" __global__ void sigmoid_cross_entropy_loss_forward(int n, const float* x,
                                                              const float* target, int has_ignore,
                                                              int ignore_label, float* terms) {
  CUDA_KERNEL_LOOP(i, n) {
    float loss = 0.0f, counted = 0.0f;
    if (!target_ignored(target[i], has_ignore, ignore_label)) {
      const float v = x[i];
      loss = fmaxf(v, 0.0f) - v * target[i] + log1pf(expf(-fabsf(v)));
      counted = 1.0f;
    }
    terms[i] = loss;
    terms[n + i] = counted;
  }
}

// dx = (sigmoid(x) - target) * loss_weight / normalizer; 0 where ignored.
extern "C" __global__ void sigmoid_cross_entropy_loss_backward(int n, const float* sigmoid,
                                                               const float* target, int has_ignore,
                                                               int ignore_label,
                                                               const float* loss_weight,
                                                               const float* inv_normalizer,
                                                               float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const bool ignored = target_ignored(target[i], has_ignore, ignore_label);
    dx[i] = ignored ? 0.0f : (sigmoid[i] - target[i]) * (loss_weight[0] * inv_normalizer[0]);
  }
}

// ---- HingeLoss -----------------------------------------------------------------
// Per element (sample i / dim, class i % dim): the margin
// max(0, 1 - x) for the true class and max(0, 1 + x) for the others, into
// margins and scratch (Caffe's forward leaves them in the bottom diff), and
// its L1 or squared (L2) term into terms.
extern "C" __global__ void hinge_loss_forward(int count, int dim, const float* x,
                                              const float* label, int squared, float* margins,
                                              float* scratch, float* terms) {
  CUDA_KERNEL_LOOP(i, count) {
    const int l = label_class(label[i / dim], dim, 0, 0);
    float m;
    if (l == LABEL_INVALID) {
      m = bad_label_nan();
    } else {
      m = fmaxf(0.0f, 1.0f + (i % dim == l ? -x[i] : x[i]));
    }
    margins[i] = m;
    scratch[i] = m;
    terms[i] = squared ? m * m : m;
  }
}

// dx = g' * loss_weight * scale, g the margin signed back (negative for the
// true class): sign(g) for L1, 2 g for L2; scale = 1 / num.
extern "C" __global__ void hinge_loss_backward(int count, int dim, const float* margins,
                                               const float* label, int squared,
                                               const float* loss_weight, float scale, float* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    const int l = label_class(label[i / dim], dim, 0, 0);
    const float g = i % dim == l ? -margins[i] : margins[i];
    // sign_of(NaN) would be 0: a bad label's gradient is NaN, as its loss.
    dx[i] = l == LABEL_INVALID ? bad_label_nan()
                               : (squared ? 2.0f * g : sign_of(g)) * (loss_weight[0] * scale);
  }
}

// ---- MultinomialLogisticLoss ---------------------------------------------------
// Per sample: -log(max(prob of the label, kLOG_THRESHOLD)).
extern "C" __global__ void multinomial_logistic_loss_forward(int num, int dim, const float* prob,
                                                             const float* label, float* terms) {
  CUDA_KERNEL_LOOP(n, num) {
    const int l = label_class(label[n], dim, 0, 0);
    terms[n] = l == LABEL_INVALID ? bad_label_nan()
                                   : -logf(fmaxf(prob[n * dim + l], LOSS_LOG_THRESHOLD));
  }
}

// dx = -loss_weight / (num max(prob, kLOG_THRESHOLD)) at the label, 0
// elsewhere; scale = 1 / num.
extern "C" __global__ void multinomial_logistic_loss_backward(int count, int dim, const float* prob,
                                                              const float* label,
                                                              const float* loss_weight,
                                                              float scale, float* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    const int l = label_class(label[i / dim], dim, 0, 0);
    float g = 0.0f;
    if (l == LABEL_INVALID) {
      g = bad_label_nan();
    } else if (i % dim == l) {
      g = -(loss_weight[0] * scale) / fmaxf(prob[i], LOSS_LOG_THRESHOLD);
    }
    dx[i] = g;
  }
}

// ---- InfogainLoss --------------------------------------------------------------
// Per position (outer, inner) of the softmax probabilities:
// -sum_c H[label, c] log(max(prob_c, kLOG_THRESHOLD)) into terms[position],
// 1 (labelled) or 0 (ignored) into terms[positions + position].
extern "C" __global__ void infogain_loss_forward(int positions, int channels, int inner,
                                                 const float* prob, const float* label,
                                                 const float* infogain, int has_ignore,
                                                 int ignore_label, float* terms) {
  CUDA_KERNEL_LOOP(index, positions) {
    const int l = label_class(label[index], channels, has_ignore, ignore_label);
    float loss = 0.0f, counted = 0.0f;
    if (l != LABEL_IGNORED) {
      counted = 1.0f;
      if (l == LABEL_INVALID) {
        loss = bad_label_nan();
      } else {
        const float* p = prob + (index / inner) * channels * inner + index % inner;
        const float* h = infogain + (long long)l * channels;
        for (int c = 0; c < channels; ++c) {
          loss -= h[c] * logf(fmaxf(p[(long long)c * inner], LOSS_LOG_THRESHOLD));
        }
      }
    }
    terms[index] = loss;
    terms[positions + index] = counted;
  }
}

// dx = (prob * rowsum(H)[label] - H[label, c]) * loss_weight / normalizer;
// 0 at ignored positions.  row_sums: H's row sums (a gemv before).
extern "C" __global__ void infogain_loss_backward(int count, int channels, int inner,
                                                  const float* prob, const float* label,
                                                  const float* infogain, const float* row_sums,
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
      g = bad_label_nan();
    } else {
      g = (prob[i] * row_sums[l] - infogain[(long long)l * channels + c]) *
          (loss_weight[0] * inv_normalizer[0]);
    }
    dx[i] = g;
  }
}

// ---- ContrastiveLoss -----------------------------------------------------------
// The similarity label: Caffe's static_cast<int>(sim) != 0 is |sim| >= 1,
// decided in float so that it is defined for every value; NaN is neither
// similar nor dissimilar and makes the pair's term and gradient NaN.
#define PAIR_DISSIMILAR 0
#define PAIR_SIMILAR 1
#define PAIR_NAN 2
static __device__ __forceinline__ int pair_kind(float sim) {
  if (fabsf(sim) >= 1.0f) return PAIR_SIMILAR;
  return fabsf(sim) < 1.0f ? PAIR_DISSIMILAR : PAIR_NAN;
}

// Per pair n: d^2 = |a_n - b_n|^2 into dist_sq, and the pair's term into
// terms: d^2 for a similar pair, else max(margin - d, 0)^2, or
// max(margin - d^2, 0) in the legacy version.
extern "C" __global__ void contrastive_loss_forward(int num, int channels, const float* a,
                                                    const float* b, const float* sim, float margin,
                                                    int legacy, float* dist_sq, float* terms) {
  CUDA_KERNEL_LOOP(n, num) {
    float d2 = 0.0f;
    for (int c = 0; c < channels; ++c) {
      const float d = a[n * channels + c] - b[n * channels + c];
      d2 += d * d;
    }
    const int kind = pair_kind(sim[n]);
    float term;
    if (kind == PAIR_NAN) {
      term = bad_label_nan();
    } else if (kind == PAIR_SIMILAR) {
      term = d2;
    } else if (legacy) {
      term = fmaxf(margin - d2, 0.0f);
    } else {
      const float gap = fmaxf(margin - sqrtf(d2), 0.0f);
      term = gap * gap;
    }
    dist_sq[n] = d2;
    terms[n] = term;
  }
}

// Gradient for a (scale = 1 / num) or b (scale = -1 / num), with Caffe's
// host code: alpha (a - b) for a similar pair; for a dissimilar one whose
// margin is not met, -alpha (a - b) (legacy) or
// -alpha (margin - d) / (d + 1e-4) (a - b); alpha = loss_weight * scale.
extern "C" __global__ void contrastive_loss_backward(int count, int channels, const float* a,
                                                     const float* b, const float* sim,
                                                     const float* dist_sq, float margin, int legacy,
                                                     const float* loss_weight, float scale,
                                                     float* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    const int n = (int)(i / channels);
    const float alpha = loss_weight[0] * scale;
    const float diff = a[i] - b[i];
    const int kind = pair_kind(sim[n]);
    float g = 0.0f;
    if (kind == PAIR_NAN) {
      g = bad_label_nan();
    } else if (kind == PAIR_SIMILAR) {
      g = alpha * diff;
    } else if (legacy) {
      if (margin - dist_sq[n] > 0.0f) g = -alpha * diff;
    } else {
      const float dist = sqrtf(dist_sq[n]);
      const float mdist = margin - dist;
      if (mdist > 0.0f) g = -alpha * mdist / (dist + 1e-4f) * diff;
    }
    dx[i] = g;
  }
}

// ---- SmoothL1Loss (Fast R-CNN) -------------------------------------------------
// diff = w_in (pred - target), kept for backward; errors = w_out f(diff),
// f(x) = 0.5 sigma^2 x^2 if |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2.
// Without weights the layer passes a ones vector for both.
extern "C" __global__ void smooth_l1_loss_forward(int n, const float* pred, const float* target,
                                                  const float* inside, const float* outside,
                                                  float sigma2, float* diff, float* errors) {
  CUDA_KERNEL_LOOP(i, n) {
    const float d = inside[i] * (pred[i] - target[i]);
    const float abs_d = fabsf(d);
    const float f = abs_d < 1.0f / sigma2 ? 0.5f * d * d * sigma2 : abs_d - 0.5f / sigma2;
    diff[i] = d;
    errors[i] = outside[i] * f;
  }
}

// dx = scale * loss_weight * f'(diff) * w_in * w_out, f'(x) = sigma^2 x
// inside the quadratic zone, sign(x) outside; scale = +-1 / num (pred or
// target).
extern "C" __global__ void smooth_l1_loss_backward(int n, const float* diff, const float* inside,
                                                   const float* outside, float sigma2,
                                                   const float* loss_weight, float scale,
                                                   float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float d = diff[i];
    const float slope = fabsf(d) < 1.0f / sigma2 ? sigma2 * d : sign_of(d);
    dx[i] = slope * inside[i] * outside[i] * (loss_weight[0] * scale);
  }
}
