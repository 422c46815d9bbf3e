// A CUDA execution model on the CPU, so the kernels in csrc/*/*_cuda.cu run (and are tested) on machines
// without a GPU. Not a simulator of the hardware: it runs the kernels' own code, thread by thread, with the
// semantics their correctness depends on, and it refuses what CUDA leaves undefined.
//
//  - Every CUDA thread of a block is a fiber (ucontext) with its own stack; the blocks of a grid run one after
//    the other. threadIdx / blockIdx / blockDim / gridDim read the running fiber's coordinates.
//  - __syncthreads() parks the fiber until every thread of the block has arrived; a thread that exits while
//    others wait at the barrier, or a barrier no thread can pass, is an error (CUDA: undefined behaviour).
//  - __syncwarp(mask) / __shfl_*_sync(mask, ...) park the fiber until every lane named in mask has reached a warp
//    operation of the same kind with the same mask; then the exchange happens at once for all of them. A lane of
//    the mask that has exited, waits elsewhere, or names another mask is an error, as is reading a lane outside
//    the mask or calling with the caller's lane outside the mask.
//  - __shared__ variables are statics (one per kernel instantiation, shared by the fibers of a block), filled
//    with 0xff bytes (NaN for floats) by the first thread of each block to reach the declaration; dynamic shared
//    memory is a per-launch buffer filled the same way before every block. A read before a write shows.
//  - The threads of a block run in thread order or, with schedule() = 1, in reverse order: a value one thread
//    reads from another without a barrier or warp synchronisation between them comes out stale in one of the
//    two orders (tests run both).
//  - The kernels' grid caps are run-time values here (max_blocks_x / _y), so tests can make every grid-stride
//    loop take several rounds.
//  - Launch configurations are checked against the hardware limits (1024 threads, grid.y/z <= 65535, 48 KiB of
//    dynamic shared memory without opt-in). Every launch is logged (name, grid, block, shared bytes) so tests
//    can check which path a call took.
//  - Atomics are plain read-modify-writes (one OS thread runs every fiber). The device arithmetic is the
//    host's: __fmul_rn & co. are not used (raster.h picks them only under __CUDA_ARCH__), and the library
//    functions (exp, log1p) are glibc's, not CUDA's; results agree with the GPU to rounding, not bitwise.
//
// The scheduler is deterministic: fibers run in the chosen order until they finish or park.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

// Under AddressSanitizer (build.py with ONESHOT_EMU_SANITIZE=1) every stack switch is announced, so ASan knows
// which stack is live (otherwise an exception thrown on a fiber's stack reads as a wild stack access).
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define ONESHOT_EMU_ASAN 1
#else
#define ONESHOT_EMU_ASAN 0
#endif

// ---------------------------------------------------------------------------------------------------------
// Vector types and the runtime API the kernels' host code touches. Only what csrc/*/*_cuda.cu (and the self
// tests) use is here: a kernel using more fails to compile in the emulator build, which is the cue to add it.
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned int x, y, z;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) double2 {
  double x, y;
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

namespace oneshot_emu {
inline int& sm_count() {
  static int n = 132;  // an H100 SXM; tests change it to steer the kernels' work splitting
  return n;
}
}  // namespace oneshot_emu

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = oneshot_emu::sm_count();
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------------
// Qualifiers.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

namespace oneshot_emu {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxDynamicShared = 48 * 1024;

enum class State { kRun, kBlockBarrier, kWarpOp, kDone };
enum class WarpOp { kSync, kShuffle };

struct Fiber {
  ucontext_t ctx;
  void* asan_fake = nullptr;
  uint3 tid;
  int linear = 0;  // index in the block
  State state = State::kRun;
  WarpOp op = WarpOp::kSync;
  unsigned int mask = 0;
  int src = 0;  // shuffle: the lane read
  alignas(16) unsigned char in[16];
  alignas(16) unsigned char out[16];
};

struct LaunchRecord {
  std::string name;
  dim3 grid, block;
  size_t smem;
};

struct Block {
  const void* sched_stack = nullptr;  // the scheduler's stack, for the ASan annotations
  size_t sched_stack_size = 0;
  dim3 grid, block;
  uint3 bid{0, 0, 0};
  std::vector<Fiber> fibers;
  ucontext_t sched;
  Fiber* cur = nullptr;
  std::function<void()> body;
  unsigned char* dyn_smem = nullptr;
  size_t dyn_bytes = 0;
  uint64_t epoch = 0;  // distinct for every block run
  std::string error;
};

// 0: threads run in index order between synchronisation points; 1: in reverse order.
inline int& schedule() {
  static int order = 0;
  return order;
}

// The kernels' grid caps (ONESHOT_CUDA_MAX_BLOCKS and _Y in csrc/common/cuda_utils.cuh, defined by build.py to
// read these): tests lower them so that every grid-stride loop runs several rounds.
inline int64_t& max_blocks_x() {
  static int64_t cap = int64_t(65535) * 16;
  return cap;
}
inline int64_t& max_blocks_y() {
  static int64_t cap = 65535;
  return cap;
}

inline uint64_t next_block_epoch() {
  static uint64_t epoch = 0;
  return ++epoch;
}

inline Block*& current_block() {
  static thread_local Block* b = nullptr;
  return b;
}

inline std::vector<LaunchRecord>& launch_log() {
  static std::vector<LaunchRecord> log;
  return log;
}

// Fiber stacks, reused across launches (mapped lazily: untouched pages cost nothing).
inline unsigned char* stacks(size_t n) {
  static thread_local unsigned char* base = nullptr;
  static thread_local size_t have = 0;
  if (n > have) {
    if (base != nullptr) munmap(base, have * kStackBytes);
    void* p = mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map fiber stacks");
    base = static_cast<unsigned char*>(p);
    have = n;
  }
  return base;
}

class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline std::string coords(const Fiber& f) {
  std::ostringstream os;
  os << "thread (" << f.tid.x << ", " << f.tid.y << ", " << f.tid.z << ")";
  return os.str();
}

inline std::string block_coords(const Block& b) {
  std::ostringstream os;
  os << "block (" << b.bid.x << ", " << b.bid.y << ", " << b.bid.z << ")";
  return os.str();
}

// Park the running fiber and return to the scheduler.
inline void park(State s) {
  Block* b = current_block();
  Fiber* f = b->cur;
  f->state = s;
#if ONESHOT_EMU_ASAN
  __sanitizer_start_switch_fiber(&f->asan_fake, b->sched_stack, b->sched_stack_size);
#endif
  swapcontext(&f->ctx, &b->sched);
#if ONESHOT_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->asan_fake, nullptr, nullptr);
#endif
}

inline void fiber_entry() {
  Block* b = current_block();
  Fiber* f = b->cur;
#if ONESHOT_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack, &b->sched_stack_size);
#endif
  try {
    b->body();
  } catch (const KernelError& e) {
    if (b->error.empty()) b->error = e.what();
  } catch (const std::exception& e) {
    if (b->error.empty()) b->error = std::string("exception in ") + coords(*f) + ": " + e.what();
  }
  f->state = State::kDone;
#if ONESHOT_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, b->sched_stack, b->sched_stack_size);  // this fiber is done
#endif
  // returns to uc_link: the scheduler
}

inline int lane_of(const Fiber& f) { return f.linear % kWarpSize; }

inline void fail(const std::string& what) {
  Block* b = current_block();
  throw KernelError(what + " (" + coords(*b->cur) + ", " + block_coords(*b) + ")");
}

// Release every warp operation whose lanes have all arrived. Called only when no fiber can run, so a lane of a
// mask that is anywhere else will never arrive: that is an error, not a wait.
inline bool release_warps(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  bool released = false;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    if (f.state != State::kWarpOp) continue;
    const int base = i - lane_of(f);
    const unsigned int mask = f.mask;
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1u)) continue;
      const int j = base + l;
      std::ostringstream why;
      if (j >= n) {
        why << "warp operation with mask 0x" << std::hex << mask << std::dec << " names lane " << l
            << ", which does not exist in a block of " << n << " threads";
      } else {
        const Fiber& g = b.fibers[j];
        if (g.state == State::kDone) {
          why << "lane " << l << " exited while the lanes of mask 0x" << std::hex << mask << std::dec
              << " wait in a warp operation";
        } else if (g.state == State::kBlockBarrier) {
          why << "lane " << l << " waits at __syncthreads while the lanes of mask 0x" << std::hex << mask << std::dec
              << " wait in a warp operation (divergent barrier)";
        } else if (g.mask != mask || g.op != f.op) {
          why << "lanes of one warp reached different warp operations (masks 0x" << std::hex << mask << " and 0x"
              << g.mask << std::dec << ")";
        }
      }
      if (!why.str().empty()) {
        b.error = why.str() + " (" + coords(f) + ", " + block_coords(b) + ")";
        return false;
      }
    }
    // Everyone is here: exchange.
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber& g = b.fibers[base + l];
      if (g.op == WarpOp::kShuffle) {
        if (!(mask >> g.src & 1u)) {
          std::ostringstream why;
          why << "lane " << l << " reads lane " << g.src << ", outside mask 0x" << std::hex << mask << " ("
              << coords(g) << ", " << block_coords(b) << ")";
          b.error = why.str();
          return false;
        }
        std::memcpy(g.out, b.fibers[base + g.src].in, sizeof(g.out));
      }
      g.state = State::kRun;
    }
    released = true;
  }
  return released;
}

inline void run_block(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  unsigned char* stack = stacks(n);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::kRun;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack + size_t(i) * kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, &fiber_entry, 0);
  }
  if (b.dyn_smem != nullptr) std::memset(b.dyn_smem, 0xff, b.dyn_bytes);
  b.epoch = next_block_epoch();
  const bool reverse = schedule() == 1;
  for (;;) {
    bool ran = false;
    for (int k = 0; k < n && b.error.empty(); ++k) {
      Fiber& f = b.fibers[reverse ? n - 1 - k : k];
      if (f.state != State::kRun) continue;
      b.cur = &f;
#if ONESHOT_EMU_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.ctx.uc_stack.ss_sp, f.ctx.uc_stack.ss_size);
#endif
      swapcontext(&b.sched, &f.ctx);
#if ONESHOT_EMU_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      ran = true;
    }
    if (!b.error.empty()) break;
    if (ran) continue;
    if (release_warps(b)) continue;
    if (!b.error.empty()) break;
    int at_barrier = 0, done = 0;
    for (const Fiber& f : b.fibers) {
      at_barrier += f.state == State::kBlockBarrier;
      done += f.state == State::kDone;
    }
    if (done == n) break;
    if (at_barrier > 0 && done == 0 && at_barrier == n) {
      for (Fiber& f : b.fibers) f.state = State::kRun;
      continue;
    }
    std::ostringstream why;
    if (at_barrier > 0 && done > 0) {
      why << "__syncthreads reached by " << at_barrier << " threads while " << done << " threads of the block exited";
    } else {
      why << "deadlock: " << at_barrier << " threads at __syncthreads, " << (n - at_barrier - done)
          << " in warp operations, " << done << " exited";
    }
    b.error = why.str() + " (" + block_coords(b) + ")";
    break;
  }
  // After an error the parked fibers are never resumed: their frames hold only trivially destructible kernel
  // locals, so dropping them leaks nothing.
  if (!b.error.empty()) throw KernelError(b.error);
}

struct Config {
  dim3 grid, block;
  size_t smem;
  Config(dim3 g, dim3 bl, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(bl), smem(s) {}
};

template <typename... P, typename... A>
void launch(const char* name, void (*kernel)(P...), Config cfg, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const dim3 g = cfg.grid, bl = cfg.block;
  const uint64_t threads = uint64_t(bl.x) * bl.y * bl.z;
  std::ostringstream why;
  if (threads == 0 || threads > 1024 || bl.z > 64)
    why << "invalid block (" << bl.x << ", " << bl.y << ", " << bl.z << ")";
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    why << "invalid grid (" << g.x << ", " << g.y << ", " << g.z << ")";
  if (cfg.smem > kMaxDynamicShared) why << "dynamic shared memory " << cfg.smem << " B over the 48 KiB default limit";
  if (!why.str().empty()) throw std::invalid_argument(std::string("cuda_emu: launch of ") + name + ": " + why.str());
  launch_log().push_back({name, g, bl, cfg.smem});

  // The kernel's parameters, by value, converted as a launch would.
  std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(args)...);
  std::vector<unsigned char> smem_buf(cfg.smem + 16);
  Block b;
  b.grid = g;
  b.block = bl;
  b.body = [&]() { std::apply(kernel, params); };
  b.dyn_bytes = cfg.smem;
  b.dyn_smem = cfg.smem ? smem_buf.data() + (16 - reinterpret_cast<uintptr_t>(smem_buf.data()) % 16) % 16 : nullptr;
  b.fibers.resize(threads);
  int i = 0;
  for (unsigned int z = 0; z < bl.z; ++z)
    for (unsigned int y = 0; y < bl.y; ++y)
      for (unsigned int x = 0; x < bl.x; ++x, ++i) {
        b.fibers[i].tid = {x, y, z};
        b.fibers[i].linear = i;
      }
  Block*& cur = current_block();
  Block* saved = cur;
  cur = &b;
  try {
    for (unsigned int bz = 0; bz < g.z; ++bz)
      for (unsigned int by = 0; by < g.y; ++by)
        for (unsigned int bx = 0; bx < g.x; ++bx) {
          b.bid = {bx, by, bz};
          run_block(b);
        }
  } catch (const KernelError& e) {
    cur = saved;
    throw std::runtime_error(std::string("cuda_emu: kernel ") + name + ": " + e.what());
  }
  cur = saved;
}

inline unsigned char* dynamic_shared() { return current_block()->dyn_smem; }

// A static __shared__ array: poisoned once per block, by the first thread that reaches its declaration.
inline void poison_shared_once(void* p, size_t bytes) {
  static std::unordered_map<void*, uint64_t> seen;
  uint64_t& e = seen[p];
  const uint64_t now = current_block()->epoch;
  if (e != now) {
    std::memset(p, 0xff, bytes);
    e = now;
  }
}

inline uint3 thread_idx() { return current_block()->cur->tid; }
inline uint3 block_idx() { return current_block()->bid; }
inline uint3 block_dim() {
  const dim3 d = current_block()->block;
  return {d.x, d.y, d.z};
}
inline uint3 grid_dim() {
  const dim3 d = current_block()->grid;
  return {d.x, d.y, d.z};
}

inline void warp_op(WarpOp op, unsigned int mask, const void* value, size_t bytes, int src) {
  Block* b = current_block();
  Fiber* f = b->cur;
  const int lane = lane_of(*f);
  if (!(mask >> lane & 1u)) {
    std::ostringstream os;
    os << "warp operation with mask 0x" << std::hex << mask << " called by lane " << std::dec << lane
       << ", outside the mask";
    fail(os.str());
  }
  f->op = op;
  f->mask = mask;
  f->src = src;
  if (bytes) std::memcpy(f->in, value, bytes);
  park(State::kWarpOp);
}

template <typename T>
T shuffle(unsigned int mask, T v, int src_lane) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of an unsupported type");
  warp_op(WarpOp::kShuffle, mask, &v, sizeof(T), src_lane);
  T out;
  std::memcpy(&out, current_block()->cur->out, sizeof(T));
  return out;
}

inline int current_lane() { return lane_of(*current_block()->cur); }

}  // namespace oneshot_emu

#define threadIdx (::oneshot_emu::thread_idx())
#define blockIdx (::oneshot_emu::block_idx())
#define blockDim (::oneshot_emu::block_dim())
#define gridDim (::oneshot_emu::grid_dim())

inline void __syncthreads() { oneshot_emu::park(oneshot_emu::State::kBlockBarrier); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  oneshot_emu::warp_op(oneshot_emu::WarpOp::kSync, mask, nullptr, 0, 0);
}

template <typename T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
  const int lane = oneshot_emu::current_lane();
  const int src = lane ^ lane_mask;
  return oneshot_emu::shuffle(mask, v, src / width == lane / width ? src : lane);
}

// One OS thread runs every fiber, and a fiber is never interrupted between these lines: plain updates are atomic.
template <typename T>
T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}
