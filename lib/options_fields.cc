#include "lib/options_fields.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace kvtier::internal {
namespace {

// The names of an enum's values, indexed by value (every options enum counts from 0). The
// static_asserts catch an enumerator appended without a name.
template <typename E>
struct EnumNames;
template <>
struct EnumNames<DeviceBackend> {
  static constexpr absl::string_view kNames[] = {"auto", "emulated", "cuda", "metadata_only"};
  static_assert(std::size(kNames) == static_cast<size_t>(DeviceBackend::kMetadataOnly) + 1);
};
template <>
struct EnumNames<CudaCopyMethod> {
  static constexpr absl::string_view kNames[] = {"auto", "kernel", "batch_memcpy", "memcpy_async"};
  static_assert(std::size(kNames) == static_cast<size_t>(CudaCopyMethod::kMemcpyAsync) + 1);
};
template <>
struct EnumNames<RemotePublish> {
  static constexpr absl::string_view kNames[] = {"write-through", "write-back", "never"};
  static_assert(std::size(kNames) == static_cast<size_t>(RemotePublish::kNever) + 1);
};

// The field reached from an Options by the member pointers M... (&Options::host,
// &HostTierOptions::capacity_bytes).
template <auto... M>
auto& Field(Options& o) {
  return (o.*....*M);
}
template <auto... M>
const auto& Field(const Options& o) {
  return (o.*....*M);
}
template <auto... M>
using FieldType = std::remove_cvref_t<decltype(Field<M...>(std::declval<Options&>()))>;

template <typename T>
constexpr OptionType TypeOf() {
  if constexpr (std::is_same_v<T, bool>) {
    return OptionType::kBool;
  } else if constexpr (std::is_enum_v<T>) {
    return OptionType::kEnum;
  } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    return OptionType::kInt;
  } else if constexpr (std::is_integral_v<T>) {
    return OptionType::kUint;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return OptionType::kString;
  } else {
    static_assert(std::is_same_v<T, PolicyParams>, "an Options field of a type the table lacks");
    return OptionType::kParams;
  }
}

template <auto... M>
OptionValue Get(const Options& o) {
  const auto& v = Field<M...>(o);
  using T = FieldType<M...>;
  if constexpr (std::is_enum_v<T>) {
    // A value outside the names (cast in by C++ code) prints as its number: SetOption rejects it.
    const auto i = static_cast<size_t>(v);
    const auto& names = EnumNames<T>::kNames;
    return i < std::size(names) ? std::string(names[i]) : absl::StrCat(static_cast<int64_t>(v));
  } else if constexpr (TypeOf<T>() == OptionType::kInt) {
    return static_cast<int64_t>(v);
  } else if constexpr (TypeOf<T>() == OptionType::kUint) {
    return static_cast<uint64_t>(v);
  } else {
    return v;
  }
}

// SetOptionValue has checked `value`: of the row's alternative, in range, a known name.
template <auto... M>
void Store(Options& o, const OptionValue& value) {
  auto& f = Field<M...>(o);
  using T = FieldType<M...>;
  if constexpr (std::is_enum_v<T>) {
    if (const auto* name = std::get_if<std::string>(&value)) {
      const auto& names = EnumNames<T>::kNames;
      const auto it = std::find(std::begin(names), std::end(names), *name);
      if (it != std::end(names)) f = static_cast<T>(it - std::begin(names));
    }
  } else if constexpr (TypeOf<T>() == OptionType::kInt) {
    if (const auto* v = std::get_if<int64_t>(&value)) f = static_cast<T>(*v);
  } else if constexpr (TypeOf<T>() == OptionType::kUint) {
    if (const auto* v = std::get_if<uint64_t>(&value)) f = static_cast<T>(*v);
  } else {
    if (const auto* v = std::get_if<T>(&value)) f = *v;
  }
}

template <auto... M>
constexpr OptionField Row(absl::string_view path, absl::string_view help) {
  using T = FieldType<M...>;
  OptionField row{
      .path = path, .type = TypeOf<T>(), .help = help, .get = &Get<M...>, .store = &Store<M...>};
  if constexpr (std::is_enum_v<T>) row.names = EnumNames<T>::kNames;
  if constexpr (TypeOf<T>() == OptionType::kInt || TypeOf<T>() == OptionType::kUint) {
    row.min = static_cast<int64_t>(std::numeric_limits<T>::min());
    row.max = static_cast<uint64_t>(std::numeric_limits<T>::max());
  }
  return row;
}

using O = Options;
using Shard = ShardIdentity;
using Dev = DeviceTierOptions;
using Host = HostTierOptions;
using Disk = DiskTierOptions;
using Remote = RemoteTierOptions;
using Events = EventOptions;

// In the order of kvtier/options.h; help texts abridge its comments. A new field of Options needs a
// row here (or, like the layout, an exclusion listed in test/options_fields_test.cc).
const OptionField kFields[] = {
    Row<&O::shard, &Shard::tp_rank>("shard.tp_rank", "tensor-parallel rank; < shard.tp_size"),
    Row<&O::shard, &Shard::tp_size>("shard.tp_size", "tensor-parallel degree; >= 1"),
    Row<&O::shard, &Shard::pp_rank>("shard.pp_rank", "pipeline-parallel stage; < shard.pp_size"),
    Row<&O::shard, &Shard::pp_size>("shard.pp_size", "pipeline-parallel degree; >= 1"),
    Row<&O::shard, &Shard::dtype>("shard.dtype", "KV element type, e.g. bfloat16 (identity)"),
    Row<&O::shard, &Shard::format>("shard.format", "engine's block format name (identity)"),
    Row<&O::shard, &Shard::replicated>(
        "shard.replicated", "every TP rank holds the same bytes (MLA): all ranks share one copy"),
    Row<&O::backend>("backend", "device backend: auto, emulated, cuda or metadata_only"),
    Row<&O::cuda, &CudaOptions::device>("cuda.device",
                                        "CUDA device ordinal; -1: the layout's device"),
    Row<&O::cuda, &CudaOptions::copy_method>("cuda.copy_method",
                                             "CUDA copy path between device tensors and host"),
    Row<&O::device, &Dev::capacity_slots>("device.capacity_slots",
                                          "device blocks kvtier may use; 0 = all num_slots"),
    Row<&O::device, &Dev::policy>("device.policy", "device tier's policy (registry name)"),
    Row<&O::device, &Dev::policy_params>("device.policy_params", "its parameters"),
    Row<&O::host, &Host::capacity_bytes>("host.capacity_bytes",
                                         "pinned host pool, bytes; 0 disables the host tier"),
    Row<&O::host, &Host::policy>("host.policy", "host tier's policy (registry name)"),
    Row<&O::host, &Host::policy_params>("host.policy_params", "its parameters"),
    Row<&O::host, &Host::wipe_on_free>("host.wipe_on_free",
                                       "zero a host slot freed by Remove, Clear or a failed copy"),
    Row<&O::host, &Host::tenant_shares>("host.tenant_shares",
                                        "tenant=share (0..1] of the host slots, e.g. a=0.5,b=0.25"),
    Row<&O::host, &Host::codec>("host.codec",
                                "encoding below the device: none, fp8_e4m3, int8 or int4 (lossy)"),
    Row<&O::host, &Host::codec_group_size>("host.codec_group_size",
                                           "int8/int4 elements per scale group (power of two)"),
    Row<&O::disk, &Disk::directory>("disk.directory", "existing directory of the slot files"),
    Row<&O::disk, &Disk::capacity_bytes>("disk.capacity_bytes",
                                         "slot files, bytes; 0 disables the disk tier"),
    Row<&O::disk, &Disk::files>("disk.files", "slots striped over this many files (1..1024)"),
    Row<&O::disk, &Disk::queue_depth>("disk.queue_depth", "io_uring operations in flight"),
    Row<&O::disk, &Disk::verify_threads>(
        "disk.verify_threads", "threads verifying reads (0..64); 0: the ring's completion thread"),
    Row<&O::disk, &Disk::policy>("disk.policy", "disk tier's policy (registry name)"),
    Row<&O::disk, &Disk::policy_params>("disk.policy_params", "its parameters"),
    Row<&O::disk, &Disk::reset_on_mismatch>(
        "disk.reset_on_mismatch", "start empty on another layout's directory instead of failing"),
    Row<&O::disk, &Disk::allow_buffered>("disk.allow_buffered",
                                         "buffered I/O where O_DIRECT is missing"),
    Row<&O::disk, &Disk::flush_on_close>("disk.flush_on_close",
                                         "copy every block down to disk at close"),
    Row<&O::disk, &Disk::wipe_on_free>(
        "disk.wipe_on_free", "zero the trailer of a disk slot freed by Remove, Clear or a failure"),
    Row<&O::disk, &Disk::tenant_shares>("disk.tenant_shares",
                                        "tenant=share (0..1] of the disk slots"),
    Row<&O::remote, &Remote::nodes>(
        "remote.nodes", "Redis Cluster host:port[,host:port...]; empty: no remote tier"),
    Row<&O::remote, &Remote::scope>("remote.scope", "caches sharing blocks share a scope"),
    Row<&O::remote, &Remote::publish>("remote.publish",
                                      "publish on reaching the host, on host eviction, or never"),
    Row<&O::remote, &Remote::ttl_seconds>("remote.ttl_seconds",
                                          "expiry of published blocks, seconds; 0: none"),
    Row<&O::remote, &Remote::match_budget_us>("remote.match_budget_us",
                                              "how long Match() waits for the store, microseconds"),
    Row<&O::remote, &Remote::timeout_ms>("remote.timeout_ms",
                                         "per batch of reads or writes, milliseconds"),
    Row<&O::remote, &Remote::connect_timeout_ms>("remote.connect_timeout_ms",
                                                 "per connection attempt, milliseconds"),
    Row<&O::remote, &Remote::password>("remote.password", "AUTH on every connection if non-empty"),
    Row<&O::remote, &Remote::threads>("remote.threads", "threads running the store's batches"),
    Row<&O::events, &Events::capacity>(
        "events.capacity", "KV events queued for TakeEvents at most; 0 = off (kvtier/events.h)"),
    Row<&O::demote_on_evict>("demote_on_evict", "device victims go to the host (false: dropped)"),
    Row<&O::host_write_through>("host_write_through",
                                "Commit also copies new blocks to the host at once"),
};

absl::Status Invalid(const OptionField& f, absl::string_view text, absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("Options.", f.path, ": '", text, "' is not ", expected));
}

// "a, b or c".
std::string OneOf(std::span<const absl::string_view> names) {
  if (names.size() < 2) return absl::StrJoin(names, "");
  return absl::StrCat(absl::StrJoin(names.first(names.size() - 1), ", "), " or ", names.back());
}

std::string Range(const OptionField& f) {
  return f.type == OptionType::kInt ? absl::StrCat("an integer in ", f.min, "..", f.max)
                                    : absl::StrCat("an integer in 0..", f.max);
}

const char* AlternativeName(const OptionValue& v) {
  static constexpr const char* kNames[] = {"a bool", "a signed integer", "an unsigned integer",
                                           "a string", "policy params"};
  return kNames[v.index()];
}

// The alternative of OptionValue that holds each OptionType.
size_t AlternativeOf(OptionType type) {
  switch (type) {
    case OptionType::kBool:
      return 0;
    case OptionType::kInt:
      return 1;
    case OptionType::kUint:
      return 2;
    case OptionType::kString:
    case OptionType::kEnum:
      return 3;
    case OptionType::kParams:
      return 4;
  }
  return 0;
}

}  // namespace

std::span<const OptionField> OptionFields() { return kFields; }

const OptionField* FindOptionField(absl::string_view path) {
  for (const OptionField& f : kFields) {
    if (f.path == path) return &f;
  }
  return nullptr;
}

const char* OptionTypeName(OptionType type) {
  switch (type) {
    case OptionType::kBool:
      return "bool";
    case OptionType::kInt:
    case OptionType::kUint:
      return "int";
    case OptionType::kString:
      return "string";
    case OptionType::kEnum:
      return "enum";
    case OptionType::kParams:
      return "params";
  }
  return "?";
}

absl::Status SetOptionValue(Options& options, const OptionField& f, const OptionValue& value) {
  if (value.index() != AlternativeOf(f.type)) {
    return absl::InvalidArgumentError(absl::StrCat("Options.", f.path, ": ", AlternativeName(value),
                                                   " vs a ", OptionTypeName(f.type), " option"));
  }
  if (f.type == OptionType::kInt) {
    const int64_t v = std::get<int64_t>(value);
    if (v < f.min || (v > 0 && static_cast<uint64_t>(v) > f.max)) {
      return Invalid(f, absl::StrCat(v), Range(f));
    }
  } else if (f.type == OptionType::kUint) {
    const uint64_t v = std::get<uint64_t>(value);
    if (v > f.max) return Invalid(f, absl::StrCat(v), Range(f));
  } else if (f.type == OptionType::kEnum) {
    const std::string& name = std::get<std::string>(value);
    if (std::find(f.names.begin(), f.names.end(), name) == f.names.end()) {
      return Invalid(f, name, OneOf(f.names));
    }
  }
  f.store(options, value);
  return absl::OkStatus();
}

absl::StatusOr<OptionValue> ParseOptionValue(const OptionField& f, absl::string_view text) {
  // One result, assigned in place: returning a fresh variant from each case makes GCC 12 warn
  // (-Wmaybe-uninitialized, a false positive) inside StatusOr's constructor.
  OptionValue out;
  switch (f.type) {
    case OptionType::kBool:
      if (!absl::SimpleAtob(text, &out.emplace<bool>())) return Invalid(f, text, "true or false");
      break;
    case OptionType::kInt:
      if (!absl::SimpleAtoi(text, &out.emplace<int64_t>())) return Invalid(f, text, Range(f));
      break;
    case OptionType::kUint:
      if (!absl::SimpleAtoi(text, &out.emplace<uint64_t>())) return Invalid(f, text, Range(f));
      break;
    case OptionType::kString:
    case OptionType::kEnum:
      out.emplace<std::string>(text);
      break;
    case OptionType::kParams: {
      PolicyParams& params = out.emplace<PolicyParams>();
      for (absl::string_view pair : absl::StrSplit(text, ',', absl::SkipEmpty())) {
        const size_t eq = pair.find('=');
        if (eq == 0 || eq == absl::string_view::npos) {
          return Invalid(f, text, "key=value[,key=value...]");
        }
        params[std::string(pair.substr(0, eq))] = std::string(pair.substr(eq + 1));
      }
      break;
    }
  }
  return out;
}

std::string FormatOptionValue(const OptionValue& value) {
  struct Format {
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(int64_t v) const { return absl::StrCat(v); }
    std::string operator()(uint64_t v) const { return absl::StrCat(v); }
    std::string operator()(const std::string& s) const { return s; }
    std::string operator()(const PolicyParams& p) const {
      return absl::StrJoin(p, ",", absl::PairFormatter("="));
    }
  };
  return std::visit(Format{}, value);
}

absl::Status SetOption(Options& options, absl::string_view path, absl::string_view value) {
  const OptionField* f = FindOptionField(path);
  if (f == nullptr) {
    std::vector<absl::string_view> known;
    for (const OptionField& row : kFields) known.push_back(row.path);
    return absl::InvalidArgumentError(
        absl::StrCat("Options.", path, ": no such option (vs ", absl::StrJoin(known, ", "), ")"));
  }
  absl::StatusOr<OptionValue> parsed = ParseOptionValue(*f, value);
  if (!parsed.ok()) return parsed.status();
  return SetOptionValue(options, *f, *parsed);
}

absl::StatusOr<std::string> GetOption(const Options& options, absl::string_view path) {
  const OptionField* f = FindOptionField(path);
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("Options.", path, ": no such option"));
  }
  return FormatOptionValue(f->get(options));
}

}  // namespace kvtier::internal
