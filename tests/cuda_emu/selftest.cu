// The emulator's own controls and self-test kernels (built with the csrc kernels by tests/cuda_emu/build.py).
// The self tests show that the emulator computes what CUDA computes for the constructs the kernels use
// (shuffles, __syncthreads, shared and dynamic shared memory, grid-stride loops, atomics) and that it refuses
// what CUDA leaves undefined, so a kernel with such a bug fails its test instead of passing by luck.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace {

constexpr int kBlock = 64;

__global__ void warp_sum_kernel(float* out) {
  float v = float(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

__global__ void block_sum_kernel(const float* in, int n, float* out) {
  __shared__ float tile[kBlock];
  float acc = 0;
  for (int base = 0; base < n; base += kBlock) {
    const int i = base + int(threadIdx.x);
    __syncthreads();
    tile[threadIdx.x] = i < n ? in[i] : 0.f;
    __syncthreads();
    if (threadIdx.x == 0)
      for (int k = 0; k < kBlock; ++k) acc += tile[k];
  }
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

__global__ void atomic_kernel(int64_t n, float* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(out + (i % 3), 1.0f);
}

__global__ void dynamic_shared_kernel(float* out) {
  extern __shared__ __align__(16) unsigned char raw[];
  float* s = reinterpret_cast<float*>(raw);
  out[threadIdx.x] = s[threadIdx.x];  // read before any write: the emulator's poison
  __syncthreads();
  s[threadIdx.x] = float(threadIdx.x) * 2;
  __syncthreads();
  out[blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// A race: thread 0 writes, the others read without a barrier. Correct only if thread 0 happens to run first.
__global__ void missing_barrier_kernel(float* out) {
  __shared__ float value[1];
  if (threadIdx.x == 0) value[0] = 42.f;
  out[threadIdx.x] = value[0];
}

// Bugs the emulator must refuse.
__global__ void exit_before_barrier_kernel(float* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void shuffle_with_exited_lane_kernel(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void lane_outside_mask_kernel(float* out) { out[threadIdx.x] = __shfl_xor_sync(0x1u, 1.0f, 1); }

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1;
}

at::Tensor selftest(c10::string_view which_sv) {
  const std::string which(which_sv);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  if (which == "warp_sum") {
    at::Tensor out = at::zeros({3 * kBlock}, opts);
    warp_sum_kernel<<<3, kBlock>>>(out.mutable_data_ptr<float>());
    return out;
  }
  if (which == "block_sum") {
    at::Tensor in = at::zeros({1000}, opts);
    for (int i = 0; i < 1000; ++i) in.mutable_data_ptr<float>()[i] = float(i % 17);
    at::Tensor out = at::zeros({2}, opts);
    block_sum_kernel<<<2, kBlock>>>(in.const_data_ptr<float>(), 1000, out.mutable_data_ptr<float>());
    return out;
  }
  if (which == "atomic") {
    at::Tensor out = at::zeros({3}, opts);
    atomic_kernel<<<4, kBlock>>>(1001, out.mutable_data_ptr<float>());
    return out;
  }
  if (which == "dynamic_shared") {
    at::Tensor out = at::zeros({2 * kBlock}, opts);
    dynamic_shared_kernel<<<1, kBlock, kBlock * sizeof(float)>>>(out.mutable_data_ptr<float>());
    return out;
  }
  at::Tensor out = at::zeros({kBlock}, opts);
  if (which == "missing_barrier") {
    missing_barrier_kernel<<<1, kBlock>>>(out.mutable_data_ptr<float>());
    return out;
  }
  if (which == "exit_before_barrier") {
    exit_before_barrier_kernel<<<1, kBlock>>>(out.mutable_data_ptr<float>());
  } else if (which == "shuffle_with_exited_lane") {
    shuffle_with_exited_lane_kernel<<<1, kBlock>>>(out.mutable_data_ptr<float>());
  } else if (which == "lane_outside_mask") {
    lane_outside_mask_kernel<<<1, kBlock>>>(out.mutable_data_ptr<float>());
  } else if (which == "divergent_barrier") {
    divergent_barrier_kernel<<<1, kBlock>>>(out.mutable_data_ptr<float>());
  } else if (which == "too_many_threads") {
    warp_sum_kernel<<<1, 2048>>>(out.mutable_data_ptr<float>());
  } else if (which == "too_much_shared") {
    dynamic_shared_kernel<<<1, kBlock, 64 * 1024>>>(out.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK_VALUE(false, "unknown self test ", which);
  }
  return out;
}

int64_t set_schedule(int64_t order) {
  TORCH_CHECK_VALUE(order == 0 || order == 1, "schedule must be 0 (thread order) or 1 (reverse), got ", order);
  const int64_t old = oneshot_emu::schedule();
  oneshot_emu::schedule() = static_cast<int>(order);
  return old;
}

std::vector<int64_t> set_max_blocks(int64_t x, int64_t y) {
  TORCH_CHECK_VALUE(x >= 1 && y >= 1, "grid caps must be >= 1, got ", x, " and ", y);
  std::vector<int64_t> old{oneshot_emu::max_blocks_x(), oneshot_emu::max_blocks_y()};
  oneshot_emu::max_blocks_x() = x;
  oneshot_emu::max_blocks_y() = y;
  return old;
}

int64_t set_sm_count(int64_t n) {
  TORCH_CHECK_VALUE(n >= 1, "sm count must be >= 1, got ", n);
  const int64_t old = oneshot_emu::sm_count();
  oneshot_emu::sm_count() = static_cast<int>(n);
  return old;
}

std::vector<std::string> launch_log() {
  std::vector<std::string> out;
  for (const auto& r : oneshot_emu::launch_log()) {
    out.push_back(r.name + " grid=" + std::to_string(r.grid.x) + "," + std::to_string(r.grid.y) + "," +
                  std::to_string(r.grid.z) + " block=" + std::to_string(r.block.x) + "," +
                  std::to_string(r.block.y) + "," + std::to_string(r.block.z) + " smem=" + std::to_string(r.smem));
  }
  return out;
}

void clear_launch_log() { oneshot_emu::launch_log().clear(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(oneshot_emu, m) {
  m.def("_selftest(str which) -> Tensor", &selftest);
  m.def("_set_sm_count(int n) -> int", &set_sm_count);
  m.def("_set_schedule(int order) -> int", &set_schedule);
  m.def("_set_max_blocks(int x, int y) -> int[]", &set_max_blocks);
  m.def("_launch_log() -> str[]", &launch_log);
  m.def("_clear_launch_log() -> ()", &clear_launch_log);
}
