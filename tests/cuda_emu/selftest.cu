// The emulator's own controls and self-test kernels (built with the csrc kernels by tests/cuda_emu/build.py).
// The self tests show that the emulator computes what CUDA computes for the constructs the kernels use
// (shuffles, __syncthreads, shared and dynamic shared memory and its opt-in, grid-stride loops, atomics and
// vector atomics, mma.sync on tensor cores, bfloat16 / half / TF32 conversions) and that it refuses what CUDA
// leaves undefined, so a kernel with such a bug fails its test instead of passing by luck.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_mma.cuh"
#include "common/cuda_utils.cuh"

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

// ---------------------------------------------------------------------------------------------------------
// Tensor cores: one warp computes D = A B + C (A [16, 16] or [16, 8], B [16, 8] or [8, 8], C [16, 8], row-major
// float32) through csrc/common/cuda_mma.cuh, each lane building its fragments by the PTX ISA's layout as written
// below (independently of the emulator's copy): groupID g = lane >> 2, threadID_in_group t = lane & 3.
// kind 0: m16n8k16 bf16 (inputs rounded to bfloat16 by the kernel); 1: m16n8k8 tf32 (rounded by cvt.rna);
// 2: m16n8k8 3xTF32 (each input split into big + small, three products); 3: m16n8k8 with raw float32 bits as
// operands (refused: not TF32).
__global__ void mma_kernel(int kind, const float* A, const float* B, const float* C, float* D, int skip_lane) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  if (lane == skip_lane) return;
  float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  using namespace oneshot::cuda::mma;
  if (kind == 0) {
    auto a = [&](int r, int c) { return pack_bf16(A[r * 16 + c], A[r * 16 + c + 1]); };
    auto b = [&](int k, int n) { return pack_bf16(B[k * 8 + n], B[(k + 1) * 8 + n]); };
    const uint32_t af[4] = {a(g, 2 * t), a(g + 8, 2 * t), a(g, 2 * t + 8), a(g + 8, 2 * t + 8)};
    const uint32_t bf[2] = {b(2 * t, g), b(2 * t + 8, g)};
    m16n8k16_bf16(d, af, bf);
  } else {
    const float av[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float bv[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    uint32_t ab[4], as[4], bb[2], bs[2];
    for (int i = 0; i < 4; ++i) {
      const Tf32Split x = tf32_split(av[i]);
      ab[i] = kind == 3 ? __float_as_uint(av[i]) : x.big;
      as[i] = x.small;
    }
    for (int i = 0; i < 2; ++i) {
      const Tf32Split x = tf32_split(bv[i]);
      bb[i] = kind == 3 ? __float_as_uint(bv[i]) : x.big;
      bs[i] = x.small;
    }
    if (kind == 2) {
      m16n8k8_tf32(d, as, bb);
      m16n8k8_tf32(d, ab, bs);
    }
    m16n8k8_tf32(d, ab, bb);
  }
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

at::Tensor selftest_mma(int64_t kind, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                        int64_t skip_lane) {
  TORCH_CHECK_VALUE(kind >= 0 && kind <= 3, "kind must be 0..3");
  const at::Tensor A = a.contiguous(), B = b.contiguous(), C = c.contiguous();
  at::Tensor D = at::zeros({16, 8}, C.options());
  mma_kernel<<<1, 32>>>(int(kind), A.const_data_ptr<float>(), B.const_data_ptr<float>(), C.const_data_ptr<float>(),
                        D.mutable_data_ptr<float>(), int(skip_lane));
  return D;
}

// Lane l of a 64-thread block writes what each shuffle gives it: [4 ops][3 widths][64]; ops: __shfl_sync(v, 5),
// __shfl_up_sync(v, 3), __shfl_down_sync(v, 3), __shfl_xor_sync(v, 6); widths 32, 16, 8; v = 100 * thread + 7.
__global__ void shuffle_kernel(float* out) {
  const float v = 100.f * threadIdx.x + 7.f;
  const int widths[3] = {32, 16, 8};
  for (int w = 0; w < 3; ++w) {
    out[(0 * 3 + w) * 64 + threadIdx.x] = __shfl_sync(0xffffffffu, v, 5, widths[w]);
    out[(1 * 3 + w) * 64 + threadIdx.x] = __shfl_up_sync(0xffffffffu, v, 3, widths[w]);
    out[(2 * 3 + w) * 64 + threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 3, widths[w]);
    out[(3 * 3 + w) * 64 + threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 6, widths[w]);
  }
}

// x -> the bits of __float2bfloat16_rn(x) / __float2half_rn(x), the floats back from bits, cvt.rna.tf32.f32(x).
__global__ void convert_kernel(int kind, const float* x, int n, int32_t* bits, float* back) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    if (kind == 0) {
      const __nv_bfloat16 h = __float2bfloat16_rn(x[i]);
      bits[i] = h.__x;
      back[i] = __bfloat162float(h);
    } else if (kind == 1) {
      const __half h = __float2half_rn(x[i]);
      bits[i] = h.__x;
      back[i] = __half2float(h);
    } else {
      const uint32_t r = oneshot::cuda::mma::tf32_rna(x[i]);
      bits[i] = int32_t(r);
      back[i] = __uint_as_float(r);
    }
  }
}

std::vector<at::Tensor> selftest_convert(int64_t kind, const at::Tensor& x) {
  const at::Tensor xc = x.contiguous();
  at::Tensor bits = at::zeros({xc.numel()}, xc.options().dtype(at::kInt)), back = at::zeros({xc.numel()}, xc.options());
  convert_kernel<<<1, 64>>>(int(kind), xc.const_data_ptr<float>(), int(xc.numel()), bits.mutable_data_ptr<int32_t>(),
                            back.mutable_data_ptr<float>());
  return {bits, back};
}

// float4 / float2 atomics (atomic_add_vec of cuda_utils.cuh): thread i adds (i, 2i, 3i, 4i) to out[i % 3] (float4
// view, offset `shift` floats: misaligned unless a multiple of 4) and (1, 1) to the float2 at 12 + 2 (i % 2).
__global__ void vector_atomic_kernel(float* out, int shift) {
  const float i = float(threadIdx.x + blockIdx.x * blockDim.x);
  const float v4[4] = {i, 2 * i, 3 * i, 4 * i};
  oneshot::cuda::atomic_add_vec<4>(out + shift + 4 * ((threadIdx.x + blockIdx.x * blockDim.x) % 3), v4);
  const float v2[2] = {1.f, 1.f};
  oneshot::cuda::atomic_add_vec<2>(out + 12 + 2 * (threadIdx.x % 2), v2);
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
  if (which == "shuffles") {
    at::Tensor out = at::zeros({12 * 64}, opts);
    shuffle_kernel<<<1, 64>>>(out.mutable_data_ptr<float>());
    return out;
  }
  if (which == "vector_atomics" || which == "vector_atomics_misaligned") {
    at::Tensor out = at::zeros({20}, opts);
    vector_atomic_kernel<<<3, kBlock>>>(out.mutable_data_ptr<float>(), which == "vector_atomics" ? 0 : 1);
    return out;
  }
  if (which == "optin_shared") {
    // 100 KiB of dynamic shared memory: refused without the opt-in, run with it; the opt-in has a ceiling
    at::Tensor out = at::zeros({2 * kBlock}, opts);
    const int big = 100 * 1024;
    std::string log;
    try {
      dynamic_shared_kernel<<<1, kBlock, big>>>(out.mutable_data_ptr<float>());
    } catch (const std::exception& e) {
      log += std::string("refused: ") + e.what() + "\n";
    }
    TORCH_CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) !=
                    cudaSuccess, "an opt-in above the device's limit was accepted");
    C10_CUDA_CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, big));
    dynamic_shared_kernel<<<1, kBlock, big>>>(out.mutable_data_ptr<float>());
    C10_CUDA_CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024));
    TORCH_CHECK(log.find("over the 48 KiB default limit") != std::string::npos, "no refusal without the opt-in: ", log);
    return out;
  }
  if (which == "device_attributes") {
    const cudaDeviceAttr attrs[5] = {cudaDevAttrMultiProcessorCount, cudaDevAttrComputeCapabilityMajor,
                                     cudaDevAttrComputeCapabilityMinor, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                                     cudaDevAttrMaxSharedMemoryPerBlockOptin};
    at::Tensor out = at::zeros({5}, opts.dtype(at::kLong));
    for (int i = 0; i < 5; ++i) out.mutable_data_ptr<int64_t>()[i] = oneshot::cuda::device_attribute(attrs[i], 0);
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
  m.def("_selftest_mma(int kind, Tensor a, Tensor b, Tensor c, int skip_lane) -> Tensor", &selftest_mma);
  m.def("_selftest_convert(int kind, Tensor x) -> Tensor[]", &selftest_convert);
  m.def("_set_sm_count(int n) -> int", &set_sm_count);
  m.def("_set_schedule(int order) -> int", &set_schedule);
  m.def("_set_max_blocks(int x, int y) -> int[]", &set_max_blocks);
  m.def("_launch_log() -> str[]", &launch_log);
  m.def("_clear_launch_log() -> ()", &clear_launch_log);
}
