#include "kvtier/options.h"

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::Status Options::Validate() const {
  if (absl::Status s = layout.ValidateShape(backend != DeviceBackend::kMetadataOnly); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("Options.layout: ", s.message()));
  }
  if (cuda.device < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.cuda.device: ", cuda.device, " vs -1 (auto) or an ordinal >= 0"));
  }
  switch (cuda.copy_method) {
    case CudaCopyMethod::kAuto:
    case CudaCopyMethod::kKernel:
    case CudaCopyMethod::kBatchMemcpy:
    case CudaCopyMethod::kMemcpyAsync:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("Options.cuda.copy_method: ", static_cast<int>(cuda.copy_method),
                       " is not a CudaCopyMethod"));
  }
  if (device.capacity_slots > layout.num_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.device.capacity_slots: ", device.capacity_slots,
                     " is more than the layout's num_slots=", layout.num_slots));
  }
  const uint64_t block = layout.block_bytes();
  if (host.capacity_bytes != 0 && host.capacity_bytes < block) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.host.capacity_bytes: ", host.capacity_bytes,
                     " is less than one block (", block, " bytes); 0 disables the host tier"));
  }
  if (host.capacity_bytes / block > UINT32_MAX - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Options.host.capacity_bytes: ", host.capacity_bytes, " is more than 2^32-1 blocks"));
  }
  if (disk.capacity_bytes > 0) {
    if (host.capacity_bytes == 0) {
      return absl::InvalidArgumentError(
          "Options.disk: the disk tier needs a host tier (Options.host.capacity_bytes > 0)");
    }
    if (disk.directory.empty()) return absl::InvalidArgumentError("Options.disk.directory: empty");
    if (disk.files == 0 || disk.files > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("Options.disk.files: ", disk.files, " vs 1..1024"));
    }
    if (disk.queue_depth == 0 || disk.queue_depth > 4096) {
      return absl::InvalidArgumentError(
          absl::StrCat("Options.disk.queue_depth: ", disk.queue_depth, " vs 1..4096"));
    }
    if (disk.policy.empty()) return absl::InvalidArgumentError("Options.disk.policy: empty");
  }
  if (device.policy.empty()) return absl::InvalidArgumentError("Options.device.policy: empty");
  if (host.policy.empty()) return absl::InvalidArgumentError("Options.host.policy: empty");
  return absl::OkStatus();
}

}  // namespace kvtier
