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
//    The sm_90 vector atomics (float2 / float4 atomicAdd) refuse a misaligned address, as the GPU faults.
//  - mma.sync (tensor cores; csrc/common/cuda_mma.cuh calls these for the instructions it issues) is a warp
//    operation like a shuffle: every lane of the warp must arrive (.aligned), then the fragments of the 32 lanes
//    are put together in the register layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k8 / m16n8k16"),
//    the product is taken and each lane gets its part of D. Products of bf16 or tf32 operands are exact in
//    float32; they are added to C in float32, k ascending, rounded after each addition (the hardware's order
//    and rounding are unspecified: results agree to float32 rounding, not bitwise). A tf32 operand whose low
//    13 bits are not zero (not produced by cvt.rna.tf32.f32) is refused.
//  - __nv_bfloat16 / __half (cuda_bf16.h, cuda_fp16.h here) convert from float to nearest even, as CUDA's
//    __float2bfloat16_rn / __float2half_rn.
//  - Dynamic shared memory above 48 KiB needs cudaFuncSetAttribute(kernel,
//    cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first, up to the device's opt-in limit (an H100's
//    227 KiB), as on the GPU.
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
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace oneshot_emu {
inline int& sm_count() {
  static int n = 132;  // an H100 SXM; tests change it to steer the kernels' work splitting
  return n;
}
// An H100's shared memory: 227 KiB a block with opt-in, 228 KiB an SM; compute capability 9.0.
constexpr int kMaxSharedOptin = 227 * 1024;
constexpr int kSharedPerSM = 228 * 1024;

// Per kernel: the dynamic shared memory allowed by cudaFuncSetAttribute (48 KiB without).
inline std::unordered_map<const void*, size_t>& func_max_dynamic_shared() {
  static std::unordered_map<const void*, size_t> m;
  return m;
}
}  // namespace oneshot_emu

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = oneshot_emu::sm_count(); return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = oneshot_emu::kSharedPerSM; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = oneshot_emu::kMaxSharedOptin; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*func)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > oneshot_emu::kMaxSharedOptin)
    return cudaErrorInvalidValue;
  oneshot_emu::func_max_dynamic_shared()[reinterpret_cast<const void*>(func)] = size_t(value);
  return cudaSuccess;
}

inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
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
enum class WarpOp { kSync, kShuffle, kMma };
enum class MmaKind { kBf16M16N8K16, kTf32M16N8K8 };

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
  // mma: the instruction and this lane's registers (on its stack, alive while it waits)
  MmaKind mma = MmaKind::kBf16M16N8K16;
  float* mma_d = nullptr;
  const uint32_t* mma_a = nullptr;
  const uint32_t* mma_b = nullptr;
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

// ---------------------------------------------------------------------------------------------------------
// mma.sync, from the PTX ISA's fragment layouts (groupID g = lane >> 2, threadID_in_group t = lane & 3; the
// lower-indexed element of a packed .b32 pair in its low 16 bits):
//   m16n8k16 .bf16 A: reg 0 (g, 2t..+1), reg 1 (g+8, 2t..+1), reg 2 (g, 2t+8..+9), reg 3 (g+8, 2t+8..+9);
//                  B: reg 0 (k 2t..+1, n g), reg 1 (k 2t+8..+9, n g)
//   m16n8k8 .tf32  A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);  B: b0 (k t, n g), b1 (k t+4, n g)
//   f32 C / D:     c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
inline float bf16_bits_to_float(uint32_t bits16) {
  const uint32_t u = (bits16 & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bool is_tf32(uint32_t bits) {
  const bool nan = (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0;
  return nan || (bits & 0x1fffu) == 0;
}

// D = A B + C for the warp whose lane 0 is fiber `base`; returns an error message or "".
inline std::string run_mma(Block& b, int base) {
  const MmaKind kind = b.fibers[base].mma;
  const int K = kind == MmaKind::kBf16M16N8K16 ? 16 : 8;
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < kWarpSize; ++l) {
    const Fiber& f = b.fibers[base + l];
    if (f.mma != kind) return "lanes of one warp issued different mma instructions";
    const int g = l >> 2, t = l & 3;
    const uint32_t* a = f.mma_a;
    const uint32_t* bb = f.mma_b;
    if (kind == MmaKind::kBf16M16N8K16) {
      const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int r = 0; r < 4; ++r) {
        A[rows[r]][cols[r]] = bf16_bits_to_float(a[r]);
        A[rows[r]][cols[r] + 1] = bf16_bits_to_float(a[r] >> 16);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + 8 * r][g] = bf16_bits_to_float(bb[r]);
        B[2 * t + 8 * r + 1][g] = bf16_bits_to_float(bb[r] >> 16);
      }
    } else {
      for (int r = 0; r < 4; ++r)
        if (!is_tf32(a[r])) return "mma .tf32 operand A with non-zero low 13 bits (not rounded by cvt.rna.tf32.f32)";
      for (int r = 0; r < 2; ++r)
        if (!is_tf32(bb[r])) return "mma .tf32 operand B with non-zero low 13 bits (not rounded by cvt.rna.tf32.f32)";
      std::memcpy(&A[g][t], &a[0], 4);
      std::memcpy(&A[g + 8][t], &a[1], 4);
      std::memcpy(&A[g][t + 4], &a[2], 4);
      std::memcpy(&A[g + 8][t + 4], &a[3], 4);
      std::memcpy(&B[t][g], &bb[0], 4);
      std::memcpy(&B[t + 4][g], &bb[1], 4);
    }
    const float* d = f.mma_d;
    C[g][2 * t] = d[0];
    C[g][2 * t + 1] = d[1];
    C[g + 8][2 * t] = d[2];
    C[g + 8][2 * t + 1] = d[3];
  }
  float D[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      float acc = C[i][j];
      for (int k = 0; k < K; ++k) acc += A[i][k] * B[k][j];  // exact products, float32 sums
      D[i][j] = acc;
    }
  for (int l = 0; l < kWarpSize; ++l) {
    float* d = b.fibers[base + l].mma_d;
    const int g = l >> 2, t = l & 3;
    d[0] = D[g][2 * t];
    d[1] = D[g][2 * t + 1];
    d[2] = D[g + 8][2 * t];
    d[3] = D[g + 8][2 * t + 1];
  }
  return "";
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
    if (f.op == WarpOp::kMma) {
      const std::string err = run_mma(b, base);
      if (!err.empty()) {
        b.error = err + " (" + coords(f) + ", " + block_coords(b) + ")";
        return false;
      }
    }
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
  const auto opt = func_max_dynamic_shared().find(reinterpret_cast<const void*>(kernel));
  const size_t limit = opt == func_max_dynamic_shared().end() ? kMaxDynamicShared : opt->second;
  if (cfg.smem > limit) {
    if (limit == kMaxDynamicShared) {
      why << "dynamic shared memory " << cfg.smem << " B over the 48 KiB default limit (no cudaFuncSetAttribute)";
    } else {
      why << "dynamic shared memory " << cfg.smem << " B over the " << limit << " B set by cudaFuncSetAttribute";
    }
  }
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

inline void mma(MmaKind kind, float* d, const uint32_t* a, const uint32_t* b) {
  Fiber* f = current_block()->cur;
  f->mma = kind;
  f->mma_d = d;
  f->mma_a = a;
  f->mma_b = b;
  warp_op(WarpOp::kMma, 0xffffffffu, nullptr, 0, 0);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d
inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma(MmaKind::kBf16M16N8K16, d, a, b);
}
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, d
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma(MmaKind::kTf32M16N8K8, d, a, b);
}

// cvt.rna.tf32.f32: to nearest, ties away from zero, keeping 10 mantissa bits; NaN and infinity pass through.
inline uint32_t cvt_rna_tf32_f32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, NaN
  u += 0x1000u;                                    // half of the dropped 13 bits' range: ties away
  return u & ~0x1fffu;
}

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

// __shfl_sync: lane srcLane of this lane's segment of `width` lanes (srcLane taken modulo width).
template <typename T>
T __shfl_sync(unsigned int mask, T v, int src_lane, int width = 32) {
  const int lane = oneshot_emu::current_lane();
  const int base = lane & ~(width - 1);
  return oneshot_emu::shuffle(mask, v, base + (src_lane & (width - 1)));
}

// __shfl_up_sync / __shfl_down_sync: lane - delta / lane + delta within the segment; lanes whose source falls
// outside it get their own value back.
template <typename T>
T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
  const int lane = oneshot_emu::current_lane();
  const int src = lane - int(delta);
  return oneshot_emu::shuffle(mask, v, src >= (lane & ~(width - 1)) ? src : lane);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
  const int lane = oneshot_emu::current_lane();
  const int src = lane + int(delta);
  return oneshot_emu::shuffle(mask, v, src < (lane & ~(width - 1)) + width ? src : lane);
}

// One OS thread runs every fiber, and a fiber is never interrupted between these lines: plain updates are atomic.
template <typename T>
T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}

// sm_90's vector atomics (global memory, naturally aligned addresses only).
inline float2 atomicAdd(float2* address, float2 v) {
  if (reinterpret_cast<uintptr_t>(address) % 8 != 0) oneshot_emu::fail("float2 atomicAdd on a misaligned address");
  const float2 old = *address;
  *address = {old.x + v.x, old.y + v.y};
  return old;
}

inline float4 atomicAdd(float4* address, float4 v) {
  if (reinterpret_cast<uintptr_t>(address) % 16 != 0) oneshot_emu::fail("float4 atomicAdd on a misaligned address");
  const float4 old = *address;
  *address = {old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}
