// HugePageAllocator: an allocator for the index's and the policies' per-slot and per-entry arrays
// that asks the kernel for transparent huge pages (madvise(MADV_HUGEPAGE)) for arrays of 2 MiB
// and more.
//
// Why: at 10^6-10^7 blocks per tier these arrays span hundreds of MiB and every request touches a
// few dozen random lines in them; with 4 KiB pages each of those touches is also a TLB miss and a
// page walk that misses the caches itself. Where THP is "madvise" (Debian's and Ubuntu's kernels'
// default), only memory advised so gets huge pages. Smaller arrays come from std::allocator.
// Memory is never touched here: pages are faulted in by use, as with std::allocator.
#ifndef KVTIER_LIB_COMMON_HUGE_PAGES_H_
#define KVTIER_LIB_COMMON_HUGE_PAGES_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace kvtier::internal {

template <typename T>
class HugePageAllocator {
 public:
  using value_type = T;
  static constexpr size_t kHugePage = size_t{2} << 20;

  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}  // NOLINT: rebinding is implicit

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < kHugePage) return std::allocator<T>().allocate(n);
    void* p = std::aligned_alloc(kHugePage, Rounded(bytes));
    if (p == nullptr) throw std::bad_alloc();   // as std::allocator; kvtier sizes arrays at Create
    madvise(p, Rounded(bytes), MADV_HUGEPAGE);  // advice only: failure leaves 4 KiB pages
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n * sizeof(T) < kHugePage) return std::allocator<T>().deallocate(p, n);
    std::free(p);
  }

  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }

 private:
  static size_t Rounded(size_t bytes) { return (bytes + kHugePage - 1) & ~(kHugePage - 1); }
};

template <typename T>
using HugeVector = std::vector<T, HugePageAllocator<T>>;

// Anonymous memory for host slots: `bytes` (a multiple of 4 KiB) mapped at a 2 MiB boundary and
// advised to transparent huge pages; nullptr (errno set) when it cannot be mapped. Free it with
// munmap(p, bytes). Not touched here.
//
// Why: a block moves to and from disk (O_DIRECT) and the GPU as one transfer per slot. On 4 KiB
// pages a 2 MiB transfer is 512 scatter-gather segments: the block layer splits it into several
// requests and a virtio or NVMe queue holds few of those at once (measured: 1 request in flight at
// the disk for 32 reads queued, 0.9 GB/s; on huge pages 20-44 in flight, 2.0-2.2 GB/s:
// docs/benchmarks.md, "Disk tier vs fio"). Where THP is "madvise" only advised memory gets them.
inline void* MapHugePageAligned(size_t bytes) {
  constexpr size_t kHuge = HugePageAllocator<char>::kHugePage;
  // Over-map by one huge page, then trim both ends: what is left starts at a 2 MiB boundary.
  const size_t reserve = bytes + kHuge;
  void* raw = mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHuge - 1) & ~(uintptr_t{kHuge} - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + reserve, used_end = aligned + bytes;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);  // advice only
  return reinterpret_cast<void*>(aligned);
}

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_COMMON_HUGE_PAGES_H_
