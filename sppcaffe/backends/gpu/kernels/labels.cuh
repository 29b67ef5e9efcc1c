// Class labels and indices held as floats (Caffe's convention), read the
// same way on every platform.  Caffe truncates them with static_cast<int>;
// that conversion is undefined for NaN, infinities and values outside int's
// range, and platforms disagree: x86 gives INT_MIN, a GPU's cvt.rzi gives 0
// for NaN and saturates otherwise, so a NaN label would silently be class 0
// on a GPU (or match ignore_label: 0).  The value is therefore checked in
// float first and truncated only when that is defined.  The host code reads
// labels the same way (sppcaffe/layers/loss.py, truncated_labels).
#pragma once

#define LABEL_IGNORED (-1)  // equals ignore_label (where one is set)
#define LABEL_INVALID (-2)  // NaN, outside int's range, or no class

// Whether `value` has a defined truncation to int; if so, it is written to
// *label.  -2^31 and 2^31 are exact floats, and NaN fails both tests.
static __device__ __forceinline__ bool label_to_int(float value, int* label) {
  if (!(value >= -2147483648.0f && value < 2147483648.0f)) return false;
  *label = (int)value;
  return true;
}

// The class in [0, classes) that `value` names (truncated toward zero), or
// LABEL_IGNORED, or LABEL_INVALID.
static __device__ __forceinline__ int label_class(float value, int classes, int has_ignore,
                                                  int ignore_label) {
  int label;
  if (!label_to_int(value, &label)) return LABEL_INVALID;
  if (has_ignore && label == ignore_label) return LABEL_IGNORED;
  return (label >= 0 && label < classes) ? label : LABEL_INVALID;
}
