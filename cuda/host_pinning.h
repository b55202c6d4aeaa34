// How CudaDevice pins a host pool (AllocateHost), as plain functions the CPU tests run
// (test/host_pinning_test.cc). No CUDA header.
//
// Pieces: cudaHostRegister is called once per piece of at most kMaxPinPiece bytes, not once for
// the pool. One call over hundreds of GiB holds the driver for seconds to minutes and, on r580+
// drivers with 4 KiB pages, fails at 512 GiB (a per-call page table over the kernel's INT_MAX
// allocation); 1 GiB pieces register in milliseconds each. A copy must not cross two
// registrations (cudaMemcpyBatchAsync refuses it, and the gather kernel translates each region
// through one registration's device address), so every piece is a whole number of `unit`s: the
// host slot, which no copy region crosses.
// NUMA: the pool's pages are placed (MPOL_PREFERRED, before registration touches them) on the
// GPU's node, read from /sys/bus/pci/devices/<bus id>/numa_node.
#ifndef KVTIER_CUDA_HOST_PINNING_H_
#define KVTIER_CUDA_HOST_PINNING_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvtier::internal {

inline constexpr uint64_t kMaxPinPiece = uint64_t{1} << 30;

// The sizes of the pieces of a `bytes`-byte pool: each a whole number of `unit`s (0: any bytes)
// and at most `max_piece` bytes, or exactly one unit where a unit is larger; the last piece takes
// the rest. Empty for 0 bytes. Their sum is `bytes`.
inline std::vector<uint64_t> PinPieces(uint64_t bytes, uint64_t unit, uint64_t max_piece) {
  std::vector<uint64_t> pieces;
  if (bytes == 0) return pieces;
  uint64_t piece = max_piece == 0 ? bytes : max_piece;
  if (unit > 0) piece = piece >= unit ? piece - piece % unit : unit;
  for (uint64_t at = 0; at < bytes; at += piece) pieces.push_back(std::min(piece, bytes - at));
  return pieces;
}

// The sysfs path of the NUMA node of the PCI device `bus_id` (cudaDeviceGetPCIBusId's
// "0000:3B:00.0"; sysfs names are lower case).
inline std::string NumaNodePath(std::string_view bus_id) {
  std::string id(bus_id);
  for (char& c : id) c = (c >= 'A' && c <= 'F') ? static_cast<char>(c - 'A' + 'a') : c;
  return "/sys/bus/pci/devices/" + id + "/numa_node";
}

// The node in a numa_node file's text ("1\n"); -1 for "-1" (no node), empty or malformed text.
inline int ParseNumaNode(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.empty() || text.size() > 4) return -1;
  int node = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return -1;
    node = node * 10 + (c - '0');
  }
  return node;
}

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_HOST_PINNING_H_
