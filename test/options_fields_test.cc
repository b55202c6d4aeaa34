#include "lib/options_fields.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kvtier/options.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

using Catch::Matchers::Contains;

// Every field of kvtier/options.h by path, by hand: the table's rows plus what it leaves out on
// purpose (kExcluded). The test below counts each struct's members (FieldCount) and requires this
// list to name as many under that struct's prefix, so adding a field to Options, or to one of its
// tier or CUDA structs, fails here until the field is listed: and a listed field that is not
// excluded must have a row. That is what keeps the C API, the Python module and kvtier-replay in
// step with Options: they take their options from the table.
constexpr absl::string_view kEveryField[] = {
    "layout",  // BlockLayout: pointers and per-layer vectors, described by each binding its own way
    "shard",
    "shard.tp_rank",
    "shard.tp_size",
    "shard.pp_rank",
    "shard.pp_size",
    "shard.dtype",
    "shard.format",
    "shard.replicated",
    "backend",
    "cuda",
    "cuda.device",
    "cuda.copy_method",
    "device",
    "device.capacity_slots",
    "device.policy",
    "device.policy_params",
    "host",
    "host.capacity_bytes",
    "host.policy",
    "host.policy_params",
    "host.wipe_on_free",
    "host.tenant_shares",
    "host.codec",
    "host.codec_group_size",
    "disk",
    "disk.directory",
    "disk.capacity_bytes",
    "disk.files",
    "disk.queue_depth",
    "disk.verify_threads",
    "disk.policy",
    "disk.policy_params",
    "disk.reset_on_mismatch",
    "disk.allow_buffered",
    "disk.flush_on_close",
    "disk.wipe_on_free",
    "disk.tenant_shares",
    "remote",
    "remote.nodes",
    "remote.scope",
    "remote.publish",
    "remote.ttl_seconds",
    "remote.match_budget_us",
    "remote.timeout_ms",
    "remote.connect_timeout_ms",
    "remote.password",
    "remote.threads",
    "events",
    "events.capacity",
    "demote_on_evict",
    "host_write_through",
};
// Not rows: the layout (see above) and the sub-structs themselves (their fields are rows).
constexpr absl::string_view kExcluded[] = {"layout", "shard", "cuda",   "device",
                                           "host",   "disk",  "remote", "events"};

// Converts to any member type, so T{AnyField{}, ...} compiles with at most as many as T has
// members: the largest such count is T's number of data members (T an aggregate). Never defined:
// used in unevaluated contexts only.
struct AnyField {
  template <typename T>
  operator T() const;  // NOLINT(google-explicit-constructor)
};
template <typename T, typename... Fields>
constexpr size_t FieldCount() {
  if constexpr (requires { T{Fields{}..., AnyField{}}; }) {
    return FieldCount<T, Fields..., AnyField>();
  } else {
    return sizeof...(Fields);
  }
}

// Listed paths directly under `prefix` ("" = Options itself).
size_t Listed(absl::string_view prefix) {
  return std::count_if(std::begin(kEveryField), std::end(kEveryField), [&](absl::string_view p) {
    if (prefix.empty()) return p.find('.') == absl::string_view::npos;
    return p.size() > prefix.size() + 1 && p.substr(0, prefix.size()) == prefix &&
           p[prefix.size()] == '.';
  });
}

bool IsExcluded(absl::string_view path) {
  return std::find(std::begin(kExcluded), std::end(kExcluded), path) != std::end(kExcluded);
}

TEST_CASE("OptionFields: the table has a row for every field of Options but the layout",
          "[options]") {
  CHECK(FieldCount<Options>() == Listed(""));
  CHECK(FieldCount<ShardIdentity>() == Listed("shard"));
  CHECK(FieldCount<CudaOptions>() == Listed("cuda"));
  CHECK(FieldCount<DeviceTierOptions>() == Listed("device"));
  CHECK(FieldCount<HostTierOptions>() == Listed("host"));
  CHECK(FieldCount<DiskTierOptions>() == Listed("disk"));
  CHECK(FieldCount<RemoteTierOptions>() == Listed("remote"));
  CHECK(FieldCount<EventOptions>() == Listed("events"));
  for (absl::string_view path : kEveryField) {
    CAPTURE(path);
    CHECK((FindOptionField(path) != nullptr) != IsExcluded(path));
  }
  std::vector<absl::string_view> rows;
  for (const OptionField& f : OptionFields()) {
    CAPTURE(f.path);
    CHECK(std::find(std::begin(kEveryField), std::end(kEveryField), f.path) !=
          std::end(kEveryField));
    CHECK(std::find(rows.begin(), rows.end(), f.path) == rows.end());  // no duplicate
    CHECK(!f.help.empty());
    CHECK((f.type == OptionType::kEnum) == !f.names.empty());
    rows.push_back(f.path);
  }
}

// Text values of each type that differ from any default, and their canonical forms.
std::vector<std::string> Samples(const OptionField& f) {
  switch (f.type) {
    case OptionType::kBool:
      return {"true", "false"};
    case OptionType::kInt:
      return {"7", absl::StrCat(f.min), absl::StrCat(f.max)};
    case OptionType::kUint:
      return {"0", "3", absl::StrCat(f.max)};
    case OptionType::kString:
      return {"", "some value"};
    case OptionType::kEnum:
      return {f.names.begin(), f.names.end()};
    case OptionType::kParams:
      return {"", "a=1", "a=1,b=x y"};
  }
  return {};
}

TEST_CASE(
    "OptionFields: every path round-trips through SetOption and GetOption, and sets only "
    "its own field",
    "[options]") {
  const Options defaults;
  for (const OptionField& f : OptionFields()) {
    for (const std::string& text : Samples(f)) {
      CAPTURE(f.path, text);
      Options o;
      REQUIRE_OK(SetOption(o, f.path, text));
      auto got = GetOption(o, f.path);
      REQUIRE_OK(got);
      CHECK(*got == text);
      // The typed value agrees, and setting it again through SetOptionValue is the same.
      CHECK(FormatOptionValue(f.get(o)) == text);
      Options typed;
      REQUIRE_OK(SetOptionValue(typed, f, f.get(o)));
      CHECK(*GetOption(typed, f.path) == text);
      // No other row moved: each row reaches a field of its own.
      for (const OptionField& other : OptionFields()) {
        if (other.path == f.path) continue;
        CAPTURE(other.path);
        CHECK(*GetOption(o, other.path) == *GetOption(defaults, other.path));
      }
    }
  }
}

TEST_CASE("OptionFields: defaults read back as options.h states them", "[options]") {
  const Options o;
  CHECK(*GetOption(o, "backend") == "auto");
  CHECK(*GetOption(o, "cuda.device") == "-1");
  CHECK(*GetOption(o, "host.policy") == "lru");
  CHECK(*GetOption(o, "disk.queue_depth") == "64");
  CHECK(*GetOption(o, "disk.flush_on_close") == "true");
  CHECK(*GetOption(o, "remote.scope") == "default");
  CHECK(*GetOption(o, "remote.publish") == "write-through");
  CHECK(*GetOption(o, "remote.connect_timeout_ms") == "500");
  CHECK(*GetOption(o, "demote_on_evict") == "true");
  CHECK(*GetOption(o, "shard.tp_rank") == "0");
  CHECK(*GetOption(o, "shard.tp_size") == "1");
  CHECK(*GetOption(o, "shard.pp_size") == "1");
  CHECK(*GetOption(o, "shard.dtype") == "");
  CHECK(*GetOption(o, "shard.replicated") == "false");
}

TEST_CASE("OptionFields: text values set the typed fields", "[options]") {
  Options o;
  REQUIRE_OK(SetOption(o, "remote.nodes", "10.0.0.1:7000,10.0.0.2:7000"));
  REQUIRE_OK(SetOption(o, "remote.publish", "write-back"));
  REQUIRE_OK(SetOption(o, "remote.timeout_ms", "250"));
  REQUIRE_OK(SetOption(o, "host.capacity_bytes", "8589934592"));
  REQUIRE_OK(SetOption(o, "disk.allow_buffered", "yes"));
  REQUIRE_OK(SetOption(o, "backend", "metadata_only"));
  REQUIRE_OK(SetOption(o, "cuda.copy_method", "batch_memcpy"));
  REQUIRE_OK(SetOption(o, "host.policy_params", "small_ratio=0.2,ghost=1"));
  REQUIRE_OK(SetOption(o, "shard.tp_rank", "3"));
  REQUIRE_OK(SetOption(o, "shard.tp_size", "8"));
  REQUIRE_OK(SetOption(o, "shard.pp_rank", "1"));
  REQUIRE_OK(SetOption(o, "shard.pp_size", "2"));
  REQUIRE_OK(SetOption(o, "shard.dtype", "bfloat16"));
  REQUIRE_OK(SetOption(o, "shard.format", "vllm-flash-nhd"));
  REQUIRE_OK(SetOption(o, "shard.replicated", "true"));
  CHECK(o.remote.nodes == "10.0.0.1:7000,10.0.0.2:7000");
  CHECK(o.remote.publish == RemotePublish::kWriteBack);
  CHECK(o.remote.timeout_ms == 250);
  CHECK(o.host.capacity_bytes == (8ull << 30));
  CHECK(o.disk.allow_buffered);
  CHECK(o.backend == DeviceBackend::kMetadataOnly);
  CHECK(o.cuda.copy_method == CudaCopyMethod::kBatchMemcpy);
  CHECK(o.host.policy_params == PolicyParams{{"small_ratio", "0.2"}, {"ghost", "1"}});
  CHECK(o.shard.tp_rank == 3);
  CHECK(o.shard.tp_size == 8);
  CHECK(o.shard.pp_rank == 1);
  CHECK(o.shard.pp_size == 2);
  CHECK(o.shard.dtype == "bfloat16");
  CHECK(o.shard.format == "vllm-flash-nhd");
  CHECK(o.shard.replicated);
  REQUIRE_OK(SetOption(o, "remote.publish", "never"));
  CHECK(o.remote.publish == RemotePublish::kNever);
}

// Values that do not parse or fit, by type (strings take any text).
std::vector<std::string> BadSamples(const OptionField& f) {
  switch (f.type) {
    case OptionType::kBool:
      return {"", "maybe", "2"};
    case OptionType::kInt:
      return {"", "x", "1.5", absl::StrCat(f.min - 1), absl::StrCat(f.max + 1)};
    case OptionType::kUint:
      // One past the field's maximum (2^64 for a uint64_t field: its text overflows).
      return {"", "-1", "x", "1e3",
              f.max == UINT64_MAX ? "18446744073709551616" : absl::StrCat(f.max + 1)};
    case OptionType::kString:
      return {};
    case OptionType::kEnum:
      return {"", "bogus", absl::StrCat(std::string(f.names.front()), " ")};
    case OptionType::kParams:
      return {"novalue", "=1", "a=1,b"};
  }
  return {};
}

TEST_CASE("OptionFields: a bad value or an unknown path is kInvalidArgument naming the path",
          "[options]") {
  for (const OptionField& f : OptionFields()) {
    for (const std::string& text : BadSamples(f)) {
      CAPTURE(f.path, text);
      Options o;
      const std::string before = *GetOption(o, f.path);
      const absl::Status s = SetOption(o, f.path, text);
      REQUIRE_CODE(s, absl::StatusCode::kInvalidArgument);
      CHECK_THAT(std::string(s.message()), Contains(absl::StrCat("Options.", f.path, ": ")));
      CHECK(*GetOption(o, f.path) == before);  // nothing stored
    }
    // A value of the wrong type through the typed path.
    Options o;
    const OptionValue wrong =
        f.type == OptionType::kBool ? OptionValue(std::string("true")) : OptionValue(true);
    REQUIRE_CODE(SetOptionValue(o, f, wrong), absl::StatusCode::kInvalidArgument);
  }
  Options o;
  const absl::Status publish = SetOption(o, "remote.publish", "x");
  REQUIRE_CODE(publish, absl::StatusCode::kInvalidArgument);
  CHECK(publish.message() ==
        "Options.remote.publish: 'x' is not write-through, write-back or never");
  for (absl::string_view path : {"remote.nodez", "", "layout.num_slots", "remote", "host."}) {
    CAPTURE(path);
    const absl::Status s = SetOption(o, path, "1");
    REQUIRE_CODE(s, absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(s.message()), Contains(absl::StrCat("Options.", path, ": ")));
    REQUIRE_CODE(GetOption(o, path), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace kvtier::internal
