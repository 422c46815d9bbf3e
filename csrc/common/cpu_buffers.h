// A small cache of large CPU output buffers (the CPU analogue of the CUDA caching allocator, for the few
// outputs that are hundreds of MB: ray_march's grad_colors, the tri-plane gradients, rasterized planes).
//
// A fresh multi-hundred-MB tensor costs more in first-touch page faults (the kernel zeroes every page) than in
// writing it, and glibc returns every block above 32 MiB to the kernel on free, so each training step pays
// those faults again. Outputs made by empty_large() come from 2 MiB-aligned, huge-page-advised blocks that
// go back to this cache when the tensor dies, and the next call of the same size reuses them already mapped.
//
// Bounded: at most ONESHOT_CPU_CACHE_MB MiB (default 1024; 0 turns the cache off) and kMaxBlocks blocks are
// kept; the rest are freed at once. oneshot.ops.empty_cpu_cache() frees everything cached.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <utility>

#include "common/cpu_math.h"

namespace oneshot {
namespace cpu {

class LargeBufferCache {
 public:
  static constexpr size_t kMinBytes = size_t(32) << 20;  // below this glibc's heap already reuses memory
  static constexpr size_t kAlign = size_t(2) << 20;
  static constexpr size_t kMaxBlocks = 8;

  static LargeBufferCache& get() {
    static LargeBufferCache* cache = new LargeBufferCache();  // leaked on purpose: outlives every tensor
    return *cache;
  }

  size_t limit() const { return limit_; }

  // A block of at least `nbytes` (rounded up to kAlign): a cached one of that size or a new one.
  void* acquire(size_t nbytes) {
    const size_t size = round_up(nbytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second == size) {
          void* p = it->first;
          cached_bytes_ -= size;
          free_.erase(it);
          return p;
        }
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, kAlign, size) != 0) return nullptr;
    advise_huge_pages(p, size);
    return p;
  }

  void release(void* p, size_t nbytes) {
    const size_t size = round_up(nbytes);
    std::lock_guard<std::mutex> lock(mutex_);
    if (size > limit_) {
      std::free(p);
      return;
    }
    free_.emplace_back(p, size);
    cached_bytes_ += size;
    while (cached_bytes_ > limit_ || free_.size() > kMaxBlocks) {  // drop the oldest
      std::free(free_.front().first);
      cached_bytes_ -= free_.front().second;
      free_.pop_front();
    }
  }

  // Frees every cached block; returns the bytes freed.
  int64_t clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t freed = cached_bytes_;
    for (auto& b : free_) std::free(b.first);
    free_.clear();
    cached_bytes_ = 0;
    return static_cast<int64_t>(freed);
  }

 private:
  LargeBufferCache() {
    const char* env = std::getenv("ONESHOT_CPU_CACHE_MB");
    long long mb = 1024;
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      const long long v = std::strtoll(env, &end, 10);
      if (end != env && v >= 0) mb = v;
    }
    limit_ = static_cast<size_t>(mb) << 20;
  }
  static size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

  std::mutex mutex_;
  std::deque<std::pair<void*, size_t>> free_;
  size_t cached_bytes_ = 0;
  size_t limit_ = 0;
};

// at::empty(sizes, opts) for a contiguous CPU output; large ones come from (and return to) the cache.
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (const auto s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  auto& cache = LargeBufferCache::get();
  if (nbytes < LargeBufferCache::kMinBytes || cache.limit() == 0) {
    at::Tensor t = at::empty(sizes, opts);
    advise_huge_pages(t.data_ptr(), t.nbytes());
    return t;
  }
  void* p = cache.acquire(nbytes);
  if (p == nullptr) return at::empty(sizes, opts);  // let the default allocator report the failure
  return at::from_blob(
      p, sizes, [nbytes](void* q) { LargeBufferCache::get().release(q, nbytes); }, opts);
}

}  // namespace cpu
}  // namespace oneshot
