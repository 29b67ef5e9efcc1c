// LSTMUnit and the per-timestep elementwise steps of RNN and LSTM.  The
// matrix products of the recurrences are cuBLAS calls made by the layers.
//
// Layouts (row-major): a state is (N, D); LSTM gate inputs are (N, 4D) with
// the four blocks i, f, o, g in that order (Caffe's LSTMUnit); cont is one
// value per stream n.
#include "common.cuh"

// Caffe's LSTMUnit (CPU) activations: sigmoid(x) = 1 / (1 + exp(-x)), and
// tanh(x) = 2 sigmoid(2x) - 1.
static __device__ __forceinline__ float lstm_unit_sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

static __device__ __forceinline__ float lstm_unit_tanh(float x) {
  return 2.0f * lstm_unit_sigmoid(2.0f * x) - 1.0f;
}

// The forget gate with the continuation folded in as Caffe's CPU LSTMUnit
// does: f = 0 where cont is 0, cont * sigmoid(x_f) elsewhere.
static __device__ __forceinline__ float lstm_unit_forget(float x, float cont) {
  return cont == 0.0f ? 0.0f : cont * lstm_unit_sigmoid(x);
}

// c = f * c_prev + i * g;  h = o * tanh(c).  n = N * D.
extern "C" __global__ void lstm_unit_forward(int n, int dim, const float* c_prev,
                                             const float* x, const float* cont, float* c,
                                             float* h) {
  CUDA_KERNEL_LOOP(index, n) {
    const long long s = index / dim;
    const int d = (int)(index % dim);
    const float* xs = x + 4 * dim * s;
    const float i = lstm_unit_sigmoid(xs[d]);
    const float f = lstm_unit_forget(xs[dim + d], cont[s]);
    const float o = lstm_unit_sigmoid(xs[2 * dim + d]);
    const float g = lstm_unit_tanh(xs[3 * dim + d]);
    const float cell = f * c_prev[index] + i * g;
    c[index] = cell;
    h[index] = o * lstm_unit_tanh(cell);
  }
}

// Gradients for c_prev and the gate inputs from those of c and h; the gates
// are recomputed from x, as Caffe does.  dc_prev may be dc (the LSTM's
// carried cell gradient): each element is read before it is written.
extern "C" __global__ void lstm_unit_backward(int n, int dim, const float* c_prev,
                                              const float* x, const float* cont,
                                              const float* c, const float* dc,
                                              const float* dh, float* dc_prev, float* dx) {
  CUDA_KERNEL_LOOP(index, n) {
    const long long s = index / dim;
    const int d = (int)(index % dim);
    const float* xs = x + 4 * dim * s;
    float* dxs = dx + 4 * dim * s;
    const float i = lstm_unit_sigmoid(xs[d]);
    const float f = lstm_unit_forget(xs[dim + d], cont[s]);
    const float o = lstm_unit_sigmoid(xs[2 * dim + d]);
    const float g = lstm_unit_tanh(xs[3 * dim + d]);
    const float cp = c_prev[index];
    const float tanh_c = lstm_unit_tanh(c[index]);
    const float h_diff = dh[index];
    const float c_term = dc[index] + h_diff * o * (1.0f - tanh_c * tanh_c);
    dxs[d] = c_term * g * i * (1.0f - i);
    dxs[dim + d] = c_term * cp * f * (1.0f - f);
    dxs[2 * dim + d] = h_diff * tanh_c * o * (1.0f - o);
    dxs[3 * dim + d] = c_term * i * (1.0f - g * g);
    dc_prev[index] = c_term * f;
  }
}

// y = cont_n * x over rows of `dim`: the previous state flushed where a
// sequence begins (Caffe's Scale layer h_conted).  n = N * dim.
extern "C" __global__ void recurrent_scale_rows(int n, int dim, const float* x,
                                                const float* cont, float* y) {
  CUDA_KERNEL_LOOP(index, n) { y[index] = x[index] * cont[index / dim]; }
}

// The gradient of a hidden state read by the next timestep and by the
// output: dh = cont_next * carry + dtop.  dh may be dtop.
extern "C" __global__ void recurrent_hidden_diff(int n, int dim, const float* dtop,
                                                 const float* carry, const float* cont_next,
                                                 float* dh) {
  CUDA_KERNEL_LOOP(index, n) { dh[index] = carry[index] * cont_next[index / dim] + dtop[index]; }
}
