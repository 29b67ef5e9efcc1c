// Tile, Filter and BatchReindex (Slice moves its blocks with copy.cu's
// copy_blocks, as Concat does).
#include "common.cuh"

// Tile: the bottom is `outer` rows of `inner` floats; the top repeats each
// row `tiles` times in a row.  One thread per top element.
extern "C" __global__ void tile_forward(int n, int inner, int tiles, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long row = i / ((long long)inner * tiles);
    y[i] = x[row * inner + i % inner];
  }
}

// Tile's gradient: each bottom element sums its `tiles` copies, in tile
// order (Caffe's copy then axpy).  A gather, one thread per bottom element.
extern "C" __global__ void tile_backward(int n, int inner, int tiles, const float* dy, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long row = i / inner;
    const float* first = dy + row * inner * tiles + (i - row * inner);
    float sum = 0.f;
    for (int t = 0; t < tiles; ++t) sum += first[(long long)t * inner];
    dx[i] = sum;
  }
}

// Rows of `inner` floats picked from x: row r of y is row rows[r] of x
// (Filter's kept items, BatchReindex's indices).  One thread per y element.
extern "C" __global__ void reindex_rows(int n, int inner, const int* rows, const float* x,
                                        float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long r = i / inner;
    y[i] = x[(long long)rows[r] * inner + (i - r * inner)];
  }
}

// The gradient of reindex_rows, written as a gather so that no two threads
// write one address: bottom row b sums the top rows
// sources[begins[b]], ..., sources[begins[b] + counts[b] - 1] in that
// order, and is zero when it has none.  One thread per bottom element.
extern "C" __global__ void reindex_rows_sum(int n, int inner, const int* sources,
                                            const int* begins, const int* counts,
                                            const float* dy, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long b = i / inner;
    const long long k = i - b * inner;
    const int* from = sources + begins[b];
    float sum = 0.f;
    for (int j = 0; j < counts[b]; ++j) sum += dy[(long long)from[j] * inner + k];
    dx[i] = sum;
  }
}
