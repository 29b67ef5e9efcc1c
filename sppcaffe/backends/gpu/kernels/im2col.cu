// im2col / col2im for 2-D convolution over several images at once, and the
// moves between a batch laid out (N, O, P) and the GEMM layout (O, N*P).
//
// Column layout (the host's sppcaffe/im2col.py, so one GEMM covers a chunk
// of `num` images): col has C*kh*kw rows and num*Ho*Wo columns,
//   col[(c*kh + i)*kw + j][(n*Ho + y)*Wo + x]
//       = im[n][c][y*sh + i*dh - ph][x*sw + j*dw - pw]   (0 in the padding)
#include "common.cuh"

// One thread per (c, n, y, x), x fastest: each fills the kh*kw column rows
// of one output position, and neighbouring threads write neighbouring
// columns (coalesced).
extern "C" __global__ void im2col_batch(int count, const float* im, int num, int channels,
                                        int height, int width, int kernel_h, int kernel_w,
                                        int pad_h, int pad_w, int stride_h, int stride_w,
                                        int dilation_h, int dilation_w, int height_col,
                                        int width_col, float* col) {
  CUDA_KERNEL_LOOP(index, count) {
    const int idx = (int)index;
    const int x = idx % width_col;
    const int y = (idx / width_col) % height_col;
    const int n = (idx / (width_col * height_col)) % num;
    const int c = idx / (width_col * height_col * num);
    const long long columns = (long long)num * height_col * width_col;
    const float* image = im + ((long long)n * channels + c) * height * width;
    float* out = col + (long long)c * kernel_h * kernel_w * columns +
                 ((long long)n * height_col + y) * width_col + x;
    const int h0 = y * stride_h - pad_h;
    const int w0 = x * stride_w - pad_w;
    for (int i = 0; i < kernel_h; ++i) {
      const int h = h0 + i * dilation_h;
      const bool row_inside = h >= 0 && h < height;
      for (int j = 0; j < kernel_w; ++j) {
        const int w = w0 + j * dilation_w;
        *out = (row_inside && w >= 0 && w < width) ? image[h * width + w] : 0.0f;
        out += columns;
      }
    }
  }
}

// The adjoint of im2col_batch, as a gather: one thread per image pixel sums
// the column entries that were copied from it, so there are no atomics and
// the result does not depend on the launch (Caffe's col2im_gpu_kernel).
// Overwrites every pixel of the `num` images.
extern "C" __global__ void col2im_batch(int count, const float* col, int num, int channels,
                                        int height, int width, int kernel_h, int kernel_w,
                                        int pad_h, int pad_w, int stride_h, int stride_w,
                                        int dilation_h, int dilation_w, int height_col,
                                        int width_col, float* im) {
  CUDA_KERNEL_LOOP(index, count) {
    const int idx = (int)index;
    // Coordinates in the padded image, where window y starts at y*stride.
    const int w = idx % width + pad_w;
    const int h = (idx / width) % height + pad_h;
    const int c = (idx / (width * height)) % channels;
    const int n = idx / (width * height * channels);
    const int extent_h = (kernel_h - 1) * dilation_h + 1;
    const int extent_w = (kernel_w - 1) * dilation_w + 1;
    // Windows whose extent covers (h, w): y*stride <= h < y*stride + extent.
    const int y_begin = h < extent_h ? 0 : (h - extent_h) / stride_h + 1;
    const int y_end = min(h / stride_h + 1, height_col);
    const int x_begin = w < extent_w ? 0 : (w - extent_w) / stride_w + 1;
    const int x_end = min(w / stride_w + 1, width_col);
    const long long columns = (long long)num * height_col * width_col;
    const float* channel_cols = col + (long long)c * kernel_h * kernel_w * columns +
                                (long long)n * height_col * width_col;
    float sum = 0.0f;
    for (int y = y_begin; y < y_end; ++y) {
      const int offset_h = h - y * stride_h;
      if (offset_h % dilation_h != 0) continue;     // falls between dilated taps
      const int i = offset_h / dilation_h;
      for (int x = x_begin; x < x_end; ++x) {
        const int offset_w = w - x * stride_w;
        if (offset_w % dilation_w != 0) continue;
        const int j = offset_w / dilation_w;
        sum += channel_cols[(long long)(i * kernel_w + j) * columns + y * width_col + x];
      }
    }
    im[index] = sum;
  }
}

// (O, num*P) GEMM result -> (num, O, P) images, adding bias[o] when
// use_bias is nonzero (bias is not read otherwise).  One thread per output.
extern "C" __global__ void conv_rows_to_images(int count, const float* rows, int num,
                                               int channels, int spatial, const float* bias,
                                               int use_bias, float* images) {
  CUDA_KERNEL_LOOP(index, count) {
    const int idx = (int)index;
    const int p = idx % spatial;
    const int o = (idx / spatial) % channels;
    const int n = idx / (spatial * channels);
    const float value = rows[((long long)o * num + n) * spatial + p];
    images[index] = use_bias ? value + bias[o] : value;
  }
}

// (num, O, P) images -> (O, num*P) rows: the top gradient in the layout the
// weight and column GEMMs take.  One thread per row element.
extern "C" __global__ void conv_images_to_rows(int count, const float* images, int num,
                                               int channels, int spatial, float* rows) {
  CUDA_KERNEL_LOOP(index, count) {
    const int idx = (int)index;
    const int p = idx % spatial;
    const int n = (idx / spatial) % num;
    const int o = idx / (spatial * num);
    rows[index] = images[((long long)n * channels + o) * spatial + p];
  }
}

// y[n][o][p] += bias[o] over (num, O, P) images.
extern "C" __global__ void conv_add_bias(int count, float* images, const float* bias,
                                         int channels, int spatial) {
  CUDA_KERNEL_LOOP(index, count) {
    images[index] += bias[((int)index / spatial) % channels];
  }
}
