// What every translation unit of the compiled kernels shares: the array shapes, the padding
// codes, the work splitting on XLA's intra-op pool, and the dispatch from run-time modes to
// template arguments. Included before any `#pragma GCC target`, so that everything here is
// compiled for the baseline ISA in every unit.
//
// Layout: channels-last. U is (N..., H, W, C) or (N..., D, H, W, C), the grid
// (N..., Ho, Wo, 2) holding (x, y) or (N..., Do, Ho, Wo, 3) holding (x, y, z), normalised to
// [-1, 1], and every array shares the leading dimensions N..., flattened here to one batch
// axis. The grid's last dimension says how many spatial axes there are.

#ifndef STN_JAX_CSRC_COMMON_H_
#define STN_JAX_CSRC_COMMON_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__linux__)
#include <sched.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define STN_HAVE_AVX2 1  // an AVX2 build of the passes exists, picked where the CPU has it
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace stn_native {

// Padding codes: gather.PADDING_CODES (tests/test_native_volumes.py checks that they agree).
constexpr int kZeros = 0;
constexpr int kBorder = 1;
constexpr int kReflection = 2;

// Taps per axis of the separable passes' kernels.
constexpr int kCubicTaps = 4;
constexpr int kNearestTaps = 1;

// Every array is (N..., S_1, ..., S_d, K) with d spatial axes (slowest first); the leading
// dims must agree across arrays.
struct Shape {
  int64_t batch = 1;
  int dims = 0;
  int64_t spatial[3] = {0, 0, 0};
  int64_t last = 0;
  // U's shape only: the grid holds pixel coordinates (attribute `pixels`), not normalised
  // ones. Carried here so that every pass's geometry sees it without another parameter.
  bool pixels = false;

  int64_t Points() const {
    int64_t n = 1;
    for (int i = 0; i < dims; ++i) n *= spatial[i];
    return n;
  }
};

// The threads a pass may split its work among: XLA's intra-op pool, and how many of its
// threads to use (MakeWorkers).
struct Workers {
  ffi::ThreadPool* pool;
  int64_t threads;
};

// What a pass needs besides its arrays: checked by the FFI handlers (ffi_handlers.cc).
struct Pass {
  Workers workers;
  ffi::DataType dtype;  // F32 or F64, shared by every array
  int32_t padding;      // a padding code above
  bool align_corners;
  Shape image;  // U's shape (dU's in the U-gradient passes); image.pixels as above
  Shape grid;
  double coord_limit;  // gather.COORD_LIMIT
};

namespace {  // internal to each unit: compiled once per build, never shared across ISAs

// ---------------------------------------------------------------------------------------
// Work splitting on XLA's intra-op pool. Chunks are claimed from an atomic counter by the
// calling thread and by helper tasks; the caller waits only for chunks already claimed, so
// it never waits on a task the pool has not started (no deadlock when the caller is itself
// a pool thread). Late tasks find no chunk left and exit without touching the work.
//
// Up to sixteen chunks per thread: when the caller runs out of chunks, each other thread
// holds at most one, and a small chunk keeps that wait short (MNIST's forward on two
// threads: chunks of about 10 us, where four per thread made them 40). The caller first
// spins on the counter (WaitForChunks), then sleeps: waking a sleeping thread costs a futex
// round trip, tens of microseconds on a virtualised core. Measured on two threads:
// benchmarks/README.md ("Work splitting").

// A spinning thread's hint to the core (x86 `pause`, Arm `yield`).
inline void CpuRelax() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_ia32_pause();
#elif defined(__GNUC__) && defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct ChunkState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;
};

// The caller's wait for the chunks that other threads claimed: a spin, then a sleep.
inline void WaitForChunks(ChunkState& state, int64_t chunks) {
  constexpr int kSpinMicroseconds = 50;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicroseconds);
  for (int spin = 1; state.done.load(std::memory_order_acquire) != chunks; ++spin) {
    CpuRelax();
    if (spin % 64 == 0 && std::chrono::steady_clock::now() > deadline) break;
  }
  std::unique_lock<std::mutex> lock(state.mutex);
  state.all_done.wait(lock, [&] { return state.done.load() == chunks; });
}

// The cores this process may run on: its CPU affinity when first asked, else what the
// standard library reports. XLA sizes its pool from these, except that with several CPU
// devices (`--xla_force_host_platform_device_count=4`) the pool has a thread per device
// however few the cores.
inline int64_t UsableCores() {
  static const int64_t cores = [] {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      return std::max<int64_t>(1, CPU_COUNT(&set));
    }
#endif
    return std::max<int64_t>(1, std::thread::hardware_concurrency());
  }();
  return cores;
}

// A pass's threads: the pool's, but no more than its share of the process's cores, which
// `parallel_calls` calls of the kernels share at once (the shards of a sharded run that
// this process's devices run together; 1 otherwise). A pass split among more threads than
// it has cores only waits on helpers that the OS has preempted: 4 devices on two cores,
// MNIST's sharded forward 0.51 -> 0.42 ms with each shard on one thread; 4 devices on one
// core, 1.26 -> 0.89 ms with the cap at the cores (benchmarks/README.md, the Zen 4 section).
inline Workers MakeWorkers(ffi::ThreadPool& pool, int64_t parallel_calls) {
  const int64_t share = UsableCores() / std::max<int64_t>(1, parallel_calls);
  return Workers{&pool, std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), share))};
}

template <typename F>
void ParallelFor(const Workers& workers, int64_t n, int64_t cost_per_item, const F& body) {
  if (n <= 0) return;
  constexpr int64_t kMinCostPerChunk = 1 << 15;  // about 10 us: below that, threads lose
  constexpr int64_t kChunksPerThread = 16;
  const int64_t threads = workers.threads;
  int64_t max_chunks = std::max<int64_t>(1, n * cost_per_item / kMinCostPerChunk);
  int64_t chunks = std::min<int64_t>({n, kChunksPerThread * threads, max_chunks});
  if (threads == 1 || chunks == 1) {
    body(0, n);
    return;
  }
  auto state = std::make_shared<ChunkState>();
  const F* work = &body;
  auto run = [state, work, n, chunks]() {
    for (int64_t k; (k = state->next.fetch_add(1)) < chunks;) {
      (*work)(n * k / chunks, n * (k + 1) / chunks);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->all_done.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < std::min(threads, chunks); ++t) {
    workers.pool->Schedule(decltype(run)(run));
  }
  run();
  WaitForChunks(*state, chunks);
}

// ---------------------------------------------------------------------------------------
// Dispatch: calls body(T{}, Dims, Padding, Align, OneChannel) for the pass's dtype (float
// or double) and number of spatial axes, its padding and align_corners, and `one_channel`,
// the last four as std::integral_constant.
template <typename F>
void Dispatch(const Pass& pass, bool one_channel, const F& body) {
  auto with_channels = [&](auto zero, auto d, auto p, auto a) {
    if (one_channel) {
      body(zero, d, p, a, std::true_type{});
    } else {
      body(zero, d, p, a, std::false_type{});
    }
  };
  auto with_align = [&](auto zero, auto d, auto p) {
    if (pass.align_corners) {
      with_channels(zero, d, p, std::true_type{});
    } else {
      with_channels(zero, d, p, std::false_type{});
    }
  };
  auto with_padding = [&](auto zero, auto d) {
    if (pass.padding == kZeros) {
      with_align(zero, d, std::integral_constant<int, kZeros>{});
    } else if (pass.padding == kBorder) {
      with_align(zero, d, std::integral_constant<int, kBorder>{});
    } else {
      with_align(zero, d, std::integral_constant<int, kReflection>{});
    }
  };
  auto with_dims = [&](auto zero) {
    if (pass.grid.dims == 2) {
      with_padding(zero, std::integral_constant<int, 2>{});
    } else {
      with_padding(zero, std::integral_constant<int, 3>{});
    }
  };
  if (pass.dtype == ffi::DataType::F32) {
    with_dims(float{});
  } else {
    with_dims(double{});
  }
}

// The arrays cross into the passes untyped; Dispatch knows their type.
template <typename T>
const T* In(const void* data) {
  return static_cast<const T*>(data);
}

template <typename T>
T* Out(void* data) {
  return static_cast<T*>(data);
}

}  // namespace
}  // namespace stn_native

#endif  // STN_JAX_CSRC_COMMON_H_
