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

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_COMMON_HUGE_PAGES_H_
