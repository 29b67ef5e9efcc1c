// Lets g++ compile the CUDA kernel sources for the CPU (tests on machines
// without a GPU).  host_device.py builds each source two ways:
//
// - plain: one thread, one block; a grid-stride loop visits every index in
//   order.  Fast, and what GPU mode on the host uses by default.
// - emulated (SPPCAFFE_EMULATE, with -fopenmp): every kernel also gets a
//   launcher, sppcaffe_launch_<name>, that runs it over simulated threads
//   with their own threadIdx/blockIdx, either one after another with the
//   indices in natural, reversed or shuffled order, or truly in parallel
//   (OpenMP, CUDA's launch shape, real atomics).  A kernel whose results
//   change with the order depends on something a GPU does not promise.
//
// Kernels must not rely on __syncthreads or shared memory either way.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct sppcaffe_dim3 { unsigned int x, y, z; };

#ifndef SPPCAFFE_EMULATE
static const sppcaffe_dim3 threadIdx = {0, 0, 0};
static const sppcaffe_dim3 blockIdx = {0, 0, 0};
static const sppcaffe_dim3 blockDim = {1, 1, 1};
static const sppcaffe_dim3 gridDim = {1, 1, 1};
#else
// Each OpenMP worker plays one simulated thread at a time.
static thread_local sppcaffe_dim3 threadIdx = {0, 0, 0};
static thread_local sppcaffe_dim3 blockIdx = {0, 0, 0};
static thread_local sppcaffe_dim3 blockDim = {1, 1, 1};
static thread_local sppcaffe_dim3 gridDim = {1, 1, 1};
#endif

using std::max;
using std::min;

// Real atomics in both builds (a compare-and-swap loop for float, as CUDA
// documents atomicAdd for types without a native instruction).
static inline float atomicAdd(float* address, float value) {
  float old, sum;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  do {
    sum = old + value;
  } while (!__atomic_compare_exchange(address, &old, &sum, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED));
  return old;
}
static inline int atomicAdd(int* address, int value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
static inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

static inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
static inline unsigned int __float_as_uint(float x) { unsigned int i; std::memcpy(&i, &x, 4); return i; }
static inline float __uint_as_float(unsigned int i) { float x; std::memcpy(&x, &i, 4); return x; }

#ifdef SPPCAFFE_EMULATE
#include <omp.h>

enum { SPPCAFFE_NATURAL = 0, SPPCAFFE_REVERSED = 1, SPPCAFFE_SHUFFLED = 2 };

// One launch, as host_device.py's _Launch packs it.
struct sppcaffe_launch {
  long long blocks, threads_per_block;
  unsigned long long seed;
  int order, parallel, workers;
};

static inline unsigned long long sppcaffe_mix(unsigned long long x) {   // splitmix64
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// The order of positions 0..n-1: natural, reversed, or a seeded shuffle (a
// Feistel permutation of the next power of four, cycle-walked into [0, n):
// a bijection that needs no table however large n is).
class sppcaffe_order {
 public:
  sppcaffe_order(long long n, int order, unsigned long long seed) : n_(n), order_(order) {
    if (order_ != SPPCAFFE_SHUFFLED || n_ < 2) return;
    while ((1LL << (2 * half_)) < n_) ++half_;
    mask_ = (1ULL << half_) - 1;
    for (int r = 0; r < 4; ++r) keys_[r] = sppcaffe_mix(seed + r);
  }

  long long operator()(long long k) const {
    if (order_ == SPPCAFFE_REVERSED) return n_ - 1 - k;
    if (order_ != SPPCAFFE_SHUFFLED || n_ < 2) return k;
    unsigned long long x = (unsigned long long)k;
    do {
      unsigned long long left = x >> half_, right = x & mask_;
      for (int r = 0; r < 4; ++r) {
        const unsigned long long next = left ^ (sppcaffe_mix(right ^ keys_[r]) & mask_);
        left = right;
        right = next;
      }
      x = (left << half_) | right;
    } while (x >= (unsigned long long)n_);
    return (long long)x;
  }

 private:
  long long n_;
  int order_;
  int half_ = 1;
  unsigned long long mask_ = 0, keys_[4] = {0, 0, 0, 0};
};

// What the current simulated thread walks: its grid-stride indices, in the
// order of the launch.
static thread_local int sppcaffe_thread_order = SPPCAFFE_NATURAL;
static thread_local unsigned long long sppcaffe_thread_seed = 0;

class sppcaffe_grid_loop {
 public:
  explicit sppcaffe_grid_loop(long long n)
      : first_((long long)blockIdx.x * blockDim.x + threadIdx.x),
        stride_((long long)blockDim.x * gridDim.x),
        steps_(first_ < n ? (n - first_ + stride_ - 1) / stride_ : 0),
        order_(steps_, sppcaffe_thread_order, sppcaffe_thread_seed) {}

  bool more() const { return step_ < steps_; }
  long long enter() {
    inside_ = true;
    return first_ + stride_ * order_(step_);
  }
  bool inside() const { return inside_; }
  void leave() { inside_ = false; }
  // Still inside after the body: it left with `break`, which ends the loop.
  void advance() { step_ = inside_ ? steps_ : step_ + 1; }

 private:
  const long long first_, stride_, steps_;
  const sppcaffe_order order_;
  long long step_ = 0;
  bool inside_ = false;
};

// The body runs once per index inside a one-pass inner loop, so `continue`
// and `break` keep their meaning.
#define CUDA_KERNEL_LOOP(i, n)                                                  \
  for (sppcaffe_grid_loop sppcaffe_loop_##i((long long)(n)); sppcaffe_loop_##i.more(); \
       sppcaffe_loop_##i.advance())                                             \
    for (long long i = sppcaffe_loop_##i.enter(); sppcaffe_loop_##i.inside();   \
         sppcaffe_loop_##i.leave())

static inline void sppcaffe_become_thread(const sppcaffe_launch& launch, long long thread) {
  blockDim = {(unsigned int)launch.threads_per_block, 1, 1};
  gridDim = {(unsigned int)launch.blocks, 1, 1};
  blockIdx = {(unsigned int)(thread / launch.threads_per_block), 0, 0};
  threadIdx = {(unsigned int)(thread % launch.threads_per_block), 0, 0};
  sppcaffe_thread_order = launch.parallel ? SPPCAFFE_NATURAL : launch.order;
  sppcaffe_thread_seed = sppcaffe_mix(launch.seed ^ (unsigned long long)thread);
}

template <typename Signature>
struct sppcaffe_entry;

template <typename... Args>
struct sppcaffe_entry<void(Args...)> {
  template <void (*kernel)(Args...)>
  static void launch(const sppcaffe_launch* launch, Args... args) {
    const long long threads = launch->blocks * launch->threads_per_block;
    if (launch->parallel) {
      // Round-robin: neighbouring simulated threads run on different
      // workers at the same time, where a race on shared data shows.
#pragma omp parallel for schedule(static, 1) num_threads(launch->workers)
      for (long long t = 0; t < threads; ++t) {
        sppcaffe_become_thread(*launch, t);
        kernel(args...);
      }
    } else {
      const sppcaffe_order order(threads, launch->order, ~launch->seed);
      for (long long t = 0; t < threads; ++t) {
        sppcaffe_become_thread(*launch, order(t));
        kernel(args...);
      }
    }
  }
};

// The launcher as a C symbol holding its address (ctypes reads it).
#define SPPCAFFE_EXPORT_LAUNCHER(name)                                              \
  extern "C" {                                                                     \
  decltype(&sppcaffe_entry<decltype(name)>::launch<name>) sppcaffe_launch_##name = \
      &sppcaffe_entry<decltype(name)>::launch<name>;                               \
  }
#endif
