#include "kvtier/options.h"

#include <xxhash.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "lib/codec/codec.h"
#include "lib/common/status_macros.h"

namespace kvtier {

namespace {

// A rank below its size, the size at least 1: "Options.shard.<rank_name>: ...".
absl::Status ValidateRank(absl::string_view rank_name, uint32_t rank, absl::string_view size_name,
                          uint32_t size) {
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.shard.", size_name, ": 0 vs at least 1"));
  }
  if (rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("Options.shard.", rank_name, ": ", rank,
                                                   " vs 0..", size - 1, " (", size_name, "=", size,
                                                   ")"));
  }
  return absl::OkStatus();
}

// Bounded, and without NUL: the C API and the Python module pass these as C strings, so a NUL
// would make the same identity impossible to spell there.
absl::Status ValidateShardString(absl::string_view name, const std::string& value) {
  if (value.size() > kMaxShardStringBytes) {
    return absl::InvalidArgumentError(absl::StrCat("Options.shard.", name, ": ", value.size(),
                                                   " bytes vs at most ", kMaxShardStringBytes));
  }
  if (const size_t nul = value.find('\0'); nul != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.shard.", name, ": a NUL byte at offset ", nul, " vs none"));
  }
  return absl::OkStatus();
}

// Bytes of one element of the dtypes Options.shard.dtype commonly names (PyTorch's spellings, with
// or without "torch."); 0 for a name it does not know, which is then not checked.
uint64_t ElementBytes(absl::string_view dtype) {
  absl::ConsumePrefix(&dtype, "torch.");
  static constexpr std::pair<absl::string_view, uint64_t> kKnown[] = {
      {"float16", 2},       {"half", 2},
      {"bfloat16", 2},      {"float32", 4},
      {"float", 4},         {"float64", 8},
      {"int8", 1},          {"uint8", 1},
      {"float8_e4m3fn", 1}, {"float8_e4m3fnuz", 1},
      {"float8_e5m2", 1},   {"float8_e5m2fnuz", 1}};
  for (const auto& [name, bytes] : kKnown) {
    if (dtype == name) return bytes;
  }
  return 0;
}

// A segment whose base, size or stride is not a whole number of elements of the named dtype cuts
// elements in two: a layout error (a wrong offset or element count), refused.
absl::Status ValidateAlignment(const BlockLayout& layout, const std::string& dtype,
                               bool need_pointers) {
  const uint64_t element = ElementBytes(dtype);
  if (element <= 1) return absl::OkStatus();
  for (size_t l = 0; l < layout.layers.size(); ++l) {
    for (size_t s = 0; s < layout.layers[l].segments.size(); ++s) {
      const Segment& g = layout.layers[l].segments[s];
      const uint64_t base = need_pointers ? reinterpret_cast<uintptr_t>(g.base) : 0;
      for (const auto& [field, value] : {std::pair<const char*, uint64_t>{"base", base},
                                         {"bytes_per_block", g.bytes_per_block},
                                         {"stride_bytes", g.stride_bytes}}) {
        if (value % element != 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("Options.layout.layers[", l, "].segments[", s, "].", field, ": ", value,
                           " is not a multiple of ", element, " bytes, the size of one ", dtype,
                           " (Options.shard.dtype)"));
        }
      }
    }
  }
  return absl::OkStatus();
}

void AppendWord(std::string& bytes, uint64_t w) {
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(w >> (8 * i)));
}

}  // namespace

uint64_t Options::Fingerprint() const {
  // Little-endian words, then each string after its length, so that ("ab", "c") and ("a", "bc")
  // differ and the value is the same on every machine. Version 2: version 1 was the shape alone.
  std::string bytes;
  AppendWord(bytes, 0x6b7674696572ULL);  // "kvtier"
  AppendWord(bytes, 2);
  AppendWord(bytes, layout.Fingerprint());
  AppendWord(bytes, shard.replicated ? 1 : 0);
  // A replicated block's bytes are the same on every TP rank and at every TP degree.
  AppendWord(bytes, shard.replicated ? 0 : shard.tp_rank);
  AppendWord(bytes, shard.replicated ? 0 : shard.tp_size);
  AppendWord(bytes, shard.pp_rank);
  AppendWord(bytes, shard.pp_size);
  for (const std::string* s : {&shard.dtype, &shard.format}) {
    AppendWord(bytes, s->size());
    bytes += *s;
  }
  // The host codec (what the tiers below store), only when there is one: without it the value is
  // the same as before codecs existed. Its roles change the encoded bytes too.
  if (host.codec != "none") {
    AppendWord(bytes, host.codec.size());
    bytes += host.codec;
    AppendWord(bytes, host.codec_group_size);
    for (const LayerLayout& l : layout.layers) {
      for (const Segment& g : l.segments) AppendWord(bytes, static_cast<uint64_t>(g.role));
    }
  }
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::vector<std::string> Options::Tenants() const {
  std::vector<std::string> names;
  for (const TenantShares* shares : {&host.tenant_shares, &disk.tenant_shares}) {
    for (const auto& [name, share] : *shares) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

namespace {

// Each share a decimal in (0, 1], named, summing to at most 1.
absl::Status ValidateShares(const char* path, const TenantShares& shares) {
  double sum = 0;
  for (const auto& [name, text] : shares) {
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": a tenant with an empty name"));
    }
    double share = 0;
    if (!absl::SimpleAtod(text, &share) || !(share > 0 && share <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tenant '", name, "' share '", text, "' vs a decimal in (0, 1]"));
    }
    sum += share;
  }
  if (sum > 1 + 1e-9) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the shares sum to ", sum, " vs at most 1"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Options::Validate() const {
  if (absl::Status s = layout.ValidateShape(backend != DeviceBackend::kMetadataOnly); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("Options.layout: ", s.message()));
  }
  KVTIER_RETURN_IF_ERROR(ValidateRank("tp_rank", shard.tp_rank, "tp_size", shard.tp_size));
  KVTIER_RETURN_IF_ERROR(ValidateRank("pp_rank", shard.pp_rank, "pp_size", shard.pp_size));
  KVTIER_RETURN_IF_ERROR(ValidateShardString("dtype", shard.dtype));
  KVTIER_RETURN_IF_ERROR(ValidateShardString("format", shard.format));
  KVTIER_RETURN_IF_ERROR(
      ValidateAlignment(layout, shard.dtype, backend != DeviceBackend::kMetadataOnly));
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
    if (disk.verify_threads > 64) {
      return absl::InvalidArgumentError(
          absl::StrCat("Options.disk.verify_threads: ", disk.verify_threads, " vs 0..64"));
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
        remote.publish != RemotePublish::kWriteBack && remote.publish != RemotePublish::kNever) {
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
  if (host.codec != "none") {
    KVTIER_ASSIGN_OR_RETURN(const internal::CodecId id,
                            internal::ParseCodec("Options.host.codec", host.codec));
    static_cast<void>(id);
    if (host.capacity_bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Options.host.codec: '", host.codec, "' needs the host tier (host.capacity_bytes > 0)"));
    }
    KVTIER_RETURN_IF_ERROR(internal::HostCodecOf(*this).status());
  }
  KVTIER_RETURN_IF_ERROR(ValidateShares("Options.host.tenant_shares", host.tenant_shares));
  KVTIER_RETURN_IF_ERROR(ValidateShares("Options.disk.tenant_shares", disk.tenant_shares));
  if (const size_t n = Tenants().size(); n > kMaxTenants) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.host/disk.tenant_shares: ", n, " tenants vs at most ", kMaxTenants));
  }
  return absl::OkStatus();
}

}  // namespace kvtier
