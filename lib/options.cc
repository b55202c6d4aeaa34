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
  if (!remote.nodes.empty()) {
    if (host.capacity_bytes == 0) {
      return absl::InvalidArgumentError(
          "Options.remote: the remote tier needs a host tier (Options.host.capacity_bytes > 0)");
    }
    if (backend == DeviceBackend::kMetadataOnly) {
      return absl::InvalidArgumentError(
          "Options.remote: the remote tier stores bytes; backend kMetadataOnly moves none");
    }
    if (remote.scope.empty() || remote.scope.find_first_of(": \t\r\n") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("Options.remote.scope: '", remote.scope,
                                                     "' must be non-empty, without ':' or spaces"));
    }
    if (remote.publish != RemotePublish::kWriteThrough &&
        remote.publish != RemotePublish::kWriteBack) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Options.remote.publish: ", static_cast<int>(remote.publish), " is not a RemotePublish"));
    }
    if (remote.timeout_ms == 0 || remote.connect_timeout_ms == 0) {
      return absl::InvalidArgumentError(
          "Options.remote.timeout_ms and connect_timeout_ms: must be > 0");
    }
    if (remote.threads == 0 || remote.threads > 64) {
      return absl::InvalidArgumentError(
          absl::StrCat("Options.remote.threads: ", remote.threads, " vs 1..64"));
    }
  }
  if (events.capacity > EventOptions::kMaxCapacity) {
    return absl::InvalidArgumentError(absl::StrCat("Options.events.capacity: ", events.capacity,
                                                   " vs 0..", EventOptions::kMaxCapacity));
  }
  if (device.policy.empty()) return absl::InvalidArgumentError("Options.device.policy: empty");
  if (host.policy.empty()) return absl::InvalidArgumentError("Options.host.policy: empty");
  return absl::OkStatus();
}

}  // namespace kvtier
