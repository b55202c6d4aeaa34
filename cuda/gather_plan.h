// The gather/scatter kernel's index and alignment arithmetic, as host-and-device functions so that
// the CPU tests (test/gather_plan_test.cc) run exactly what the GPU runs.
//
// A region (dst, src, bytes) is copied in the widest word W of 16, 8, 4 (else 1) bytes for which
// dst and src share their offset modulo W: a byte-wise head up to dst's next W boundary (the same
// boundary for src), W-byte words, a byte-wise tail. Each thread of a grid-stride loop handles the
// words tid, tid + threads, ... (kUnroll loads in flight before their stores) and the head and
// tail bytes tid, tid + threads, ...: every byte is written exactly once, whatever the grid.
// No CUDA header: host code includes it too.
#ifndef KVTIER_CUDA_GATHER_PLAN_H_
#define KVTIER_CUDA_GATHER_PLAN_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVTIER_HOST_DEVICE __host__ __device__
#define KVTIER_UNROLL _Pragma("unroll")
#else
#define KVTIER_HOST_DEVICE
#define KVTIER_UNROLL
#endif

namespace kvtier::internal {

struct CopyPlan {
  uint32_t width = 1;  // bytes per word: 16, 8, 4 or 1
  uint64_t head = 0;   // bytes before the first word (dst + head is width-aligned)
  uint64_t words = 0;  // width-byte words after the head
  uint64_t tail = 0;   // bytes after the words
};

KVTIER_HOST_DEVICE inline CopyPlan PlanCopy(uint64_t dst, uint64_t src, uint64_t bytes) {
  CopyPlan p;
  p.width = 16;
  while (p.width > 1 && ((dst ^ src) & (p.width - 1)) != 0) p.width >>= 1;
  if (p.width == 2) p.width = 1;  // no 2-byte path: a byte loop is as good
  const uint64_t mask = p.width - 1;
  p.head = (p.width - (dst & mask)) & mask;
  if (p.head > bytes) p.head = bytes;
  p.words = (bytes - p.head) / p.width;
  p.tail = bytes - p.head - p.words * p.width;
  return p;
}

// Thread-block counts of one launch: `x` blocks per region (enough for `max_bytes` at
// `bytes_per_block_pass` per pass, at most `max_x`) and `y` region rows, with x * y <= max_ctas
// (at least 1 each); the kernel strides over the regions beyond y and the bytes beyond x.
struct GatherGrid {
  uint32_t x = 1;
  uint32_t y = 1;
};

KVTIER_HOST_DEVICE inline GatherGrid PlanGrid(uint32_t regions, uint64_t max_bytes,
                                              uint64_t bytes_per_block_pass, uint32_t max_x,
                                              uint32_t max_ctas) {
  GatherGrid g;
  if (max_ctas == 0) max_ctas = 1;
  uint64_t x = (max_bytes + bytes_per_block_pass - 1) / bytes_per_block_pass;
  if (x < 1) x = 1;
  if (x > max_x) x = max_x;
  if (x > max_ctas) x = max_ctas;
  uint64_t y = regions == 0 ? 1 : regions;
  if (x * y > max_ctas) y = max_ctas / x;
  if (y < 1) y = 1;
  g.x = static_cast<uint32_t>(x);
  g.y = static_cast<uint32_t>(y);
  return g;
}

template <typename Word>
KVTIER_HOST_DEVICE inline void CopyWords(unsigned char* dst, const unsigned char* src,
                                         uint64_t words, uint64_t tid, uint64_t threads) {
  constexpr uint32_t kUnroll = 4;  // loads in flight per thread before their stores: hides PCIe
                                   // latency when the source is mapped host memory
  const auto* s = reinterpret_cast<const Word*>(src);
  auto* d = reinterpret_cast<Word*>(dst);
  for (uint64_t base = tid; base < words; base += kUnroll * threads) {
    Word v[kUnroll] = {};  // every v[k] stored was loaded; = {} for GCC 12's -O3 false positive
    KVTIER_UNROLL
    for (uint32_t k = 0; k < kUnroll; ++k) {
      const uint64_t i = base + k * threads;
      if (i < words) v[k] = s[i];
    }
    KVTIER_UNROLL
    for (uint32_t k = 0; k < kUnroll; ++k) {
      const uint64_t i = base + k * threads;
      if (i < words) d[i] = v[k];
    }
  }
}

struct alignas(16) Word16 {
  unsigned long long lo, hi;
};

// Thread `tid` of `threads`' share of one region.
KVTIER_HOST_DEVICE inline void CopyRegionShare(void* dst_ptr, const void* src_ptr, uint64_t bytes,
                                               uint64_t tid, uint64_t threads) {
  auto* dst = static_cast<unsigned char*>(dst_ptr);
  const auto* src = static_cast<const unsigned char*>(src_ptr);
  const CopyPlan p =
      PlanCopy(reinterpret_cast<uint64_t>(dst), reinterpret_cast<uint64_t>(src), bytes);
  for (uint64_t i = tid; i < p.head; i += threads) dst[i] = src[i];
  unsigned char* d = dst + p.head;
  const unsigned char* s = src + p.head;
  switch (p.width) {
    case 16:
      CopyWords<Word16>(d, s, p.words, tid, threads);
      break;
    case 8:
      CopyWords<unsigned long long>(d, s, p.words, tid, threads);
      break;
    case 4:
      CopyWords<unsigned int>(d, s, p.words, tid, threads);
      break;
    default:
      CopyWords<unsigned char>(d, s, p.words, tid, threads);
      break;
  }
  const uint64_t done = p.head + p.words * p.width;
  for (uint64_t i = tid; i < p.tail; i += threads) dst[done + i] = src[done + i];
}

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_GATHER_PLAN_H_
