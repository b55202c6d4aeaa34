#include "kvtier/prometheus.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/cache.h"
#include "lib/tiers/disk_tier.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

// ---- An independent reader of the text format (0.0.4), strict where kvtier promises more ----

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;  // values unescaped
  double value = 0;
};

struct Exposition {
  std::vector<std::string> errors;           // empty: valid
  std::map<std::string, std::string> types;  // family -> type
  std::vector<Sample> samples;

  // The value of the one sample `name` whose labels include `want`; NaN if none or several.
  double Value(const std::string& name, const std::map<std::string, std::string>& want = {}) const {
    double found = NAN;
    int n = 0;
    for (const Sample& s : samples) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : want) {
        auto it = s.labels.find(k);
        match = match && it != s.labels.end() && it->second == v;
      }
      if (match) {
        found = s.value;
        n++;
      }
    }
    return n == 1 ? found : NAN;
  }
};

bool ParseValue(const std::string& text, double* out) {
  if (text == "+Inf") {
    *out = INFINITY;
    return true;
  }
  if (text == "-Inf") {
    *out = -INFINITY;
    return true;
  }
  if (text == "NaN") {
    *out = NAN;
    return true;
  }
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  return !text.empty() && end == text.c_str() + text.size();
}

// Parses `{a="x",b="y\"z"}` starting at text[*pos] == '{'; unescapes values.
bool ParseLabels(const std::string& text, size_t* pos, std::map<std::string, std::string>* out,
                 std::string* error) {
  static const std::regex kLabelName("[a-zA-Z_][a-zA-Z0-9_]*");
  size_t i = *pos + 1;
  while (i < text.size() && text[i] != '}') {
    const size_t eq = text.find('=', i);
    if (eq == std::string::npos) return (*error = "label without '='", false);
    const std::string name = text.substr(i, eq - i);
    if (!std::regex_match(name, kLabelName)) return (*error = "bad label name " + name, false);
    if (eq + 1 >= text.size() || text[eq + 1] != '"') return (*error = "unquoted value", false);
    std::string value;
    size_t j = eq + 2;
    for (;; ++j) {
      if (j >= text.size()) return (*error = "unterminated label value", false);
      const char c = text[j];
      if (c == '"') break;
      if (c == '\n') return (*error = "raw newline in a label value", false);
      if (c == '\\') {
        if (++j >= text.size()) return (*error = "dangling backslash", false);
        const char e = text[j];
        if (e == 'n') {
          value += '\n';
        } else if (e == '\\' || e == '"') {
          value += e;
        } else {
          return (*error = std::string("bad escape \\") + e, false);
        }
      } else {
        value += c;
      }
    }
    if (!out->emplace(name, value).second) return (*error = "label repeated: " + name, false);
    i = j + 1;
    if (i < text.size() && text[i] == ',') {
      ++i;
    } else if (i >= text.size() || text[i] != '}') {
      return (*error = "expected ',' or '}' after a label", false);
    }
  }
  if (i >= text.size()) return (*error = "unterminated label set", false);
  *pos = i + 1;
  return true;
}

// The family a sample belongs to: its own name, or a histogram's for _bucket/_sum/_count.
std::string FamilyOf(const std::string& name, const std::map<std::string, std::string>& types) {
  if (types.count(name) != 0) return name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      const std::string base = name.substr(0, name.size() - s.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return "";
}

Exposition Parse(const std::string& text) {
  static const std::regex kMetricName("[a-zA-Z_:][a-zA-Z0-9_:]*");
  Exposition x;
  auto fail = [&](int line, const std::string& what) {
    x.errors.push_back("line " + std::to_string(line) + ": " + what);
  };
  if (text.empty() || text.back() != '\n') fail(0, "does not end in a newline");
  std::set<std::string> helped, done_families;
  std::string current;  // family of the samples being read
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, kind, name;
      words >> hash >> kind >> name;
      if (kind != "HELP" && kind != "TYPE") continue;  // a comment
      if (!std::regex_match(name, kMetricName)) fail(n, "bad metric name " + name);
      if (kind == "HELP") {
        if (!helped.insert(name).second) fail(n, "second HELP for " + name);
        if (done_families.count(name) != 0 || current == name) fail(n, "HELP after samples");
      } else {
        std::string type, extra;
        words >> type >> extra;
        if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" &&
            type != "untyped") {
          fail(n, "bad type " + type);
        }
        if (!extra.empty()) fail(n, "text after the type");
        if (!x.types.emplace(name, type).second) fail(n, "second TYPE for " + name);
        if (done_families.count(name) != 0 || current == name) fail(n, "TYPE after samples");
      }
      continue;
    }
    Sample s;
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    s.name = line.substr(0, pos);
    if (!std::regex_match(s.name, kMetricName)) fail(n, "bad metric name " + s.name);
    if (pos < line.size() && line[pos] == '{') {
      std::string error;
      if (!ParseLabels(line, &pos, &s.labels, &error)) {
        fail(n, error);
        continue;
      }
    }
    if (pos >= line.size() || line[pos] != ' ') {
      fail(n, "no value");
      continue;
    }
    std::string value = line.substr(pos + 1);
    if (const size_t sp = value.find(' '); sp != std::string::npos) {
      // An optional timestamp: an integer.
      const std::string ts = value.substr(sp + 1);
      if (ts.empty() || ts.find_first_not_of("-0123456789") != std::string::npos) {
        fail(n, "bad timestamp");
      }
      value = value.substr(0, sp);
    }
    if (!ParseValue(value, &s.value)) fail(n, "bad value " + value);
    const std::string family = FamilyOf(s.name, x.types);
    if (family.empty()) {
      fail(n, "sample before (or without) its TYPE: " + s.name);
    } else {
      if (helped.count(family) == 0) fail(n, "sample before (or without) its HELP: " + s.name);
      if (family != current) {
        if (done_families.count(family) != 0) fail(n, "family split in two groups: " + family);
        if (!current.empty()) done_families.insert(current);
        current = family;
      }
      const std::string& type = x.types[family];
      if (type == "counter") {
        if (s.name.size() < 6 || s.name.compare(s.name.size() - 6, 6, "_total") != 0) {
          fail(n, "counter not named _total: " + s.name);
        }
        if (!(s.value >= 0)) fail(n, "negative counter " + s.name);
      }
      if (type == "histogram" && s.name == family) fail(n, "histogram sample without suffix");
    }
    x.samples.push_back(std::move(s));
  }
  // Histograms: per label set (le aside), le ascending up to +Inf, counts cumulative, +Inf ==
  // _count, and a _sum.
  for (const auto& [family, type] : x.types) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
    std::map<std::map<std::string, std::string>, std::pair<int, double>> counts, sums;
    for (const Sample& s : x.samples) {
      std::map<std::string, std::string> key = s.labels;
      if (s.name == family + "_bucket") {
        auto le = key.find("le");
        double bound = 0;
        if (le == key.end() || !ParseValue(le->second, &bound)) {
          fail(0, family + ": bucket without a numeric le");
          continue;
        }
        key.erase(le);
        buckets[key].push_back({bound, s.value});
      } else if (s.name == family + "_count") {
        counts[key].first++;
        counts[key].second = s.value;
      } else if (s.name == family + "_sum") {
        sums[key].first++;
        sums[key].second = s.value;
      }
    }
    if (buckets.empty()) fail(0, family + ": no bucket");
    for (const auto& [key, b] : buckets) {
      for (size_t i = 1; i < b.size(); ++i) {
        if (!(b[i].first > b[i - 1].first)) fail(0, family + ": le not ascending");
        if (b[i].second < b[i - 1].second) fail(0, family + ": buckets not cumulative");
      }
      if (b.empty() || !std::isinf(b.back().first)) fail(0, family + ": no +Inf bucket last");
      if (counts[key].first != 1) fail(0, family + ": not one _count");
      if (sums[key].first != 1) fail(0, family + ": not one _sum");
      if (!b.empty() && b.back().second != counts[key].second) {
        fail(0, family + ": +Inf bucket != _count");
      }
    }
  }
  return x;
}

std::string Errors(const Exposition& x) {
  std::string out;
  for (const std::string& e : x.errors) out += e + "\n";
  return out;
}

// Every tier metric the formatter promises, with the field it must show.
struct TierField {
  const char* name;
  uint64_t TierStats::*field;
};
constexpr TierField kTierFields[] = {
    {"kvtier_capacity_blocks", &TierStats::capacity_blocks},
    {"kvtier_used_blocks", &TierStats::used_blocks},
    {"kvtier_pinned_blocks", &TierStats::pinned_blocks},
    {"kvtier_in_flight_blocks", &TierStats::in_flight_blocks},
    {"kvtier_queue_depth", &TierStats::queue_depth},
    {"kvtier_hits_total", &TierStats::hits},
    {"kvtier_misses_total", &TierStats::misses},
    {"kvtier_inserts_total", &TierStats::inserts},
    {"kvtier_evictions_total", &TierStats::evictions},
    {"kvtier_drops_total", &TierStats::drops},
    {"kvtier_demotions_total", &TierStats::demotions},
    {"kvtier_promotions_total", &TierStats::promotions},
    {"kvtier_bytes_in_total", &TierStats::bytes_in},
    {"kvtier_bytes_out_total", &TierStats::bytes_out},
    {"kvtier_fill_failures_total", &TierStats::fill_failures},
    {"kvtier_corrupt_reads_total", &TierStats::corrupt_reads},
    {"kvtier_io_errors_total", &TierStats::io_errors},
};

// The exposition of `s` is valid and shows exactly its values.
void CheckExposition(const CacheStats& s, const std::string& text,
                     const std::map<std::string, std::string>& constant = {}) {
  INFO(text);
  const Exposition x = Parse(text);
  INFO(Errors(x));
  REQUIRE(x.errors.empty());
  for (const Sample& sample : x.samples) {
    for (const auto& [k, v] : constant) {
      INFO(sample.name << " lacks " << k);
      CHECK((sample.labels.count(k) == 1 && sample.labels.at(k) == v));
    }
  }
  const std::pair<const char*, const TierStats*> tiers[] = {
      {"device", &s.device}, {"host", &s.host}, {"disk", &s.disk}};
  for (const TierField& f : kTierFields) {
    CHECK(x.types.count(f.name) == 1);
    for (const auto& [tier, ts] : tiers) {
      CAPTURE(f.name, tier);
      CHECK(x.Value(f.name, {{"tier", tier}}) == static_cast<double>(ts->*f.field));
    }
  }
  CHECK(x.Value("kvtier_match_calls_total") == s.match_calls);
  CHECK(x.Value("kvtier_blocks_queried_total") == s.blocks_queried);
  CHECK(x.Value("kvtier_blocks_missed_total") == s.blocks_missed);
  CHECK(x.Value("kvtier_blocks_loaded_total") == s.blocks_loaded);
  CHECK(x.Value("kvtier_blocks_committed_total") == s.blocks_committed);
  CHECK(x.Value("kvtier_transfer_failures_total") == s.transfer_failures);
  CHECK(x.Value("kvtier_leases_live") == s.leases_live);
  CHECK(x.Value("kvtier_index_work_total") == s.index_work);
  CHECK(x.Value("kvtier_events_dropped_total") == s.events_dropped);
  CHECK(x.Value("kvtier_transfers_in_flight") == s.transfers_in_flight);
  CHECK(x.Value("kvtier_disk_buffered_io") == (s.disk_buffered_io ? 1 : 0));
  CHECK(x.Value("kvtier_remote_hits_total") == s.remote.hits);
  CHECK(x.Value("kvtier_remote_reads_total") == s.remote.reads);
  CHECK(x.Value("kvtier_remote_corrupt_reads_total") == s.remote.corrupt_reads);
  CHECK(x.Value("kvtier_remote_writes_total") == s.remote.writes);
  CHECK(x.Value("kvtier_remote_bytes_written_total") == s.remote.bytes_written);
  const std::pair<const char*, const LatencyHistogram*> histograms[] = {
      {"kvtier_remote_read_latency_seconds", &s.remote_read_latency},
      {"kvtier_remote_write_latency_seconds", &s.remote_write_latency},
      {"kvtier_load_latency_seconds", &s.load_latency},
      {"kvtier_demotion_latency_seconds", &s.demotion_latency},
      {"kvtier_disk_write_latency_seconds", &s.disk_write_latency},
      {"kvtier_disk_read_latency_seconds", &s.disk_read_latency}};
  for (const auto& [name, h] : histograms) {
    CAPTURE(name);
    const std::string family = name;
    CHECK(x.types.count(family) == 1);
    CHECK(x.types.at(family) == "histogram");
    CHECK(x.Value(family + "_count") == h->count);
    CHECK(x.Value(family + "_bucket", {{"le", "+Inf"}}) == h->count);
    CHECK(std::abs(x.Value(family + "_sum") - h->sum_nanos / 1e9) <= 1e-9 * (1 + h->count));
    // Every finite bucket, by its bound: cumulative counts of the stats' own buckets.
    for (int i = 0; i < LatencyHistogram::kFinite; ++i) {
      CAPTURE(i);
      const double bound = LatencyHistogram::UpperBoundNanos(i) / 1e9;
      double seen = NAN;
      for (const Sample& smp : x.samples) {
        double le = 0;
        if (smp.name == family + "_bucket" && ParseValue(smp.labels.at("le"), &le) &&
            std::abs(le - bound) <= bound * 1e-12) {
          seen = smp.value;
        }
      }
      CHECK(seen == h->Cumulative(i));
    }
  }
}

// Lookups reach a tier when every tier above missed: hits + misses add up down the hierarchy.
void CheckLookups(const CacheStats& s) {
  CHECK(s.device.hits + s.device.misses == s.blocks_queried);
  CHECK(s.host.hits + s.host.misses == s.device.misses);
  CHECK(s.disk.hits + s.disk.misses == s.host.misses);
  CHECK(s.disk.misses == s.blocks_missed);
}

// Waits (yielding, bounded) until no copy into any tier is in flight: disk writes finish on the
// ring's thread after the call that started them returned.
CacheStats Settled(Cache& cache) {
  CacheStats s = cache.Stats();
  for (int i = 0; i < 10'000'000; ++i) {
    if (s.device.in_flight_blocks + s.host.in_flight_blocks + s.disk.in_flight_blocks +
            s.disk.queue_depth ==
        0) {
      break;
    }
    std::this_thread::yield();
    s = cache.Stats();
  }
  return s;
}

TEST_CASE("Prometheus: stats follow a cache through match, allocate, load, commit and release",
          "[prometheus][stats]") {
  test::EngineKv kv({.num_slots = 4});
  auto cache = Cache::Create(test::MakeOptions(kv, 16));
  REQUIRE_OK(cache);
  const uint64_t block = kv.layout().block_bytes();
  const auto a = test::Chain(3, 1);
  const auto b = test::Chain(3, 2);

  // A cold sequence: three misses everywhere, three new device blocks.
  REQUIRE_OK(test::RunSequence(**cache, kv, a));
  CacheStats s = (*cache)->Stats();
  CHECK(s.match_calls == 1);
  CHECK(s.blocks_queried == 3);
  CHECK(s.blocks_missed == 3);
  CHECK(s.device.misses == 3);
  CHECK(s.host.misses == 3);
  CHECK(s.disk.misses == 3);
  CHECK(s.device.hits == 0);
  CHECK(s.blocks_committed == 3);
  CHECK(s.device.inserts == 3);
  CHECK(s.device.used_blocks == 3);
  CHECK(s.device.capacity_blocks == 4);
  CHECK(s.host.capacity_blocks == 16);
  CHECK(s.load_latency.count == 1);  // a Load with nothing to copy is a sample too
  CHECK(s.demotion_latency.count == 0);
  CHECK(s.leases_live == 0);
  CheckLookups(s);
  CheckExposition(s, FormatPrometheus(s));

  // A second sequence needs two of a's device slots: a's leaves are written back to the host.
  REQUIRE_OK(test::RunSequence(**cache, kv, b));
  s = (*cache)->Stats();
  CHECK(s.device.evictions == 2);
  CHECK(s.device.drops == 0);
  CHECK(s.device.demotions == 2);
  CHECK(s.demotions == 2);
  CHECK(s.host.inserts == 2);
  CHECK(s.host.used_blocks == 2);
  CHECK(s.device.bytes_out == 2 * block);
  CHECK(s.host.bytes_in == 2 * block);
  CHECK(s.bytes_d2h == 2 * block);
  CHECK(s.demotion_latency.count == 1);  // one batch: AllocateDevice waited for it
  CHECK(s.host.in_flight_blocks == 0);
  CHECK(s.load_latency.count == 2);
  CheckLookups(s);

  // a again: its root is still on the device, its two leaves come back from the host.
  DeviceLease held;
  auto again = test::RunSequence(**cache, kv, a, &held);
  REQUIRE_OK(again);
  CHECK(again->loaded == 3);
  CHECK(again->mismatched_bytes == 0);
  s = (*cache)->Stats();
  CHECK(s.device.hits == 1);
  CHECK(s.host.hits == 2);
  CHECK(s.blocks_missed == 6);
  CHECK(s.device.promotions >= 2);
  CHECK(s.device.promotions == s.promotions);
  CHECK(s.host.promotions == 0);  // nothing came from disk
  CHECK(s.device.bytes_in == s.device.promotions * block);
  CHECK(s.host.bytes_out == s.device.bytes_in);
  CHECK(s.blocks_loaded == 3);
  CHECK(s.load_latency.count == 3);
  CHECK(s.load_latency.sum_nanos > 0);
  CHECK(s.transfers_in_flight == 0);
  CHECK(s.leases_live == 1);
  CHECK(s.device.pinned_blocks == 3);  // the held lease pins a's three blocks
  CHECK(s.device.fill_failures + s.host.fill_failures + s.disk.fill_failures ==
        s.transfer_failures);
  CheckLookups(s);
  CheckExposition(s, FormatPrometheus(s));

  REQUIRE_OK((*cache)->Release(held));
  s = (*cache)->Stats();
  CHECK(s.leases_live == 0);
  CHECK(s.device.pinned_blocks == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Prometheus: disk counters and latencies move with write-back and reads",
          "[prometheus][stats][disk]") {
  const test::TempDir tmp("prometheus_test");  // removed after the cache, even on failure
  const std::filesystem::path& dir = tmp.path;
  {
    test::EngineKv kv({.num_slots = 4});
    const uint64_t block = kv.layout().block_bytes();
    Options o = test::MakeOptions(kv, 2);
    auto align = internal::DiskTier::Alignment(dir.string());
    REQUIRE_OK(align);
    // With a disk tier a host slot holds the block padded for direct I/O plus its trailer.
    o.host.capacity_bytes = 2 * internal::DiskTier::HostSlotBytes(block, *align);
    o.disk = {.directory = dir.string(),
              .capacity_bytes = 64 * internal::DiskTier::HostSlotBytes(block, *align)};
    auto cache = Cache::Create(o);
    REQUIRE_OK(cache);
    for (int round = 0; round < 2; ++round) {
      for (uint32_t seed = 1; seed <= 8; ++seed) {
        auto r = test::RunSequence(**cache, kv, test::Chain(2, seed));
        REQUIRE_OK(r);
        CHECK(r->mismatched_bytes == 0);
      }
    }
    const CacheStats s = Settled(**cache);
    CHECK(s.disk.in_flight_blocks == 0);
    CHECK(s.disk.queue_depth == 0);
    CHECK(s.disk.hits > 0);
    CHECK(s.host.demotions > 0);  // host write-backs to disk
    CHECK(s.disk.inserts == s.host.demotions);
    CHECK(s.disk.bytes_in == s.host.demotions * block);
    CHECK(s.disk_write_latency.count == s.host.demotions);
    CHECK(s.host.promotions > 0);  // disk reads into host slots
    CHECK(s.disk_read_latency.count == s.host.promotions);
    CHECK(s.disk.bytes_out == s.host.promotions * block);
    CHECK(s.host.bytes_in == s.bytes_d2h + s.bytes_disk_read);
    CHECK(s.disk.corrupt_reads == 0);
    CHECK(s.disk.io_errors == 0);
    CheckLookups(s);
    CheckExposition(s, FormatPrometheus(s));
  }
}

CacheStats SomeStats() {
  CacheStats s;
  s.device = {.capacity_blocks = 16, .used_blocks = 7, .hits = 5, .misses = 11, .bytes_in = 1};
  s.host = {.capacity_blocks = 32, .hits = 4, .misses = 7, .demotions = 3};
  s.disk = {.hits = 2, .misses = 5, .corrupt_reads = 1, .io_errors = 2};
  s.match_calls = 3;
  s.blocks_queried = 16;
  s.blocks_missed = 5;
  for (uint64_t ns : {500u, 1000u, 1001u, 3000u, 2'000'000u, 4'000'000'000u}) {
    s.load_latency.buckets[LatencyHistogram::BucketFor(ns)]++;
    s.load_latency.count++;
    s.load_latency.sum_nanos += ns;
  }
  s.disk_write_latency.buckets[LatencyHistogram::kFinite] = 2;  // beyond the last bound
  s.disk_write_latency.count = 2;
  s.disk_write_latency.sum_nanos = 40'000'000'000;
  s.disk_buffered_io = true;
  return s;
}

TEST_CASE("Prometheus: histogram buckets are cumulative, by bound, up to +Inf == count",
          "[prometheus]") {
  const CacheStats s = SomeStats();
  CHECK(LatencyHistogram::BucketFor(0) == 0);
  CHECK(LatencyHistogram::BucketFor(1000) == 0);
  CHECK(LatencyHistogram::BucketFor(1001) == 1);
  CHECK(LatencyHistogram::BucketFor(UINT64_MAX) == LatencyHistogram::kFinite);
  const std::string text = FormatPrometheus(s);
  CheckExposition(s, text);
  const Exposition x = Parse(text);
  CHECK(x.Value("kvtier_load_latency_seconds_bucket", {{"le", "1e-06"}}) == 2);  // 500, 1000 ns
  CHECK(x.Value("kvtier_load_latency_seconds_bucket", {{"le", "2e-06"}}) == 3);
  CHECK(x.Value("kvtier_load_latency_seconds_bucket", {{"le", "4e-06"}}) == 4);
  CHECK(x.Value("kvtier_load_latency_seconds_bucket", {{"le", "0.002048"}}) == 5);
  CHECK(x.Value("kvtier_load_latency_seconds_bucket", {{"le", "8.388608"}}) == 6);
  CHECK(x.Value("kvtier_load_latency_seconds_bucket", {{"le", "+Inf"}}) == 6);
  CHECK(x.Value("kvtier_disk_write_latency_seconds_bucket", {{"le", "8.388608"}}) == 0);
  CHECK(x.Value("kvtier_disk_write_latency_seconds_bucket", {{"le", "+Inf"}}) == 2);
  CHECK(x.Value("kvtier_disk_write_latency_seconds_sum") == 40);
  CHECK(x.Value("kvtier_disk_buffered_io") == 1);
}

TEST_CASE("Prometheus: constant labels are escaped and read back unchanged", "[prometheus]") {
  const CacheStats s = SomeStats();
  const std::string nasty = "gpu \"0\"\\rank\n2 {x=\"y\"}, \\n";
  const PrometheusLabel labels[] = {{"instance", nasty}, {"model", "llama"}};
  auto text = FormatPrometheus(s, labels);
  REQUIRE_OK(text);
  CHECK(text->find('\n' + std::string("2 {x")) == std::string::npos);  // no raw newline inside
  CheckExposition(s, *text, {{"instance", nasty}, {"model", "llama"}});
  const Exposition x = Parse(*text);
  CHECK(x.Value("kvtier_hits_total", {{"instance", nasty}, {"tier", "host"}}) == 4);

  SECTION("no labels: the same as the plain overload") {
    auto plain = FormatPrometheus(s, std::span<const PrometheusLabel>());
    REQUIRE_OK(plain);
    CHECK(*plain == FormatPrometheus(s));
  }
  SECTION("bad label names are rejected") {
    for (const char* bad : {"", "tier", "le", "__reserved", "1abc", "a-b", "a b"}) {
      CAPTURE(bad);
      const PrometheusLabel one[] = {{bad, "v"}};
      REQUIRE_CODE(FormatPrometheus(s, one), absl::StatusCode::kInvalidArgument);
    }
    const PrometheusLabel twice[] = {{"a", "1"}, {"a", "2"}};
    REQUIRE_CODE(FormatPrometheus(s, twice), absl::StatusCode::kInvalidArgument);
  }
}

// The validator must catch what a broken formatter would write: each mutation of a valid
// exposition is one mistake.
TEST_CASE("Prometheus: the test's validator rejects broken expositions", "[prometheus]") {
  const PrometheusLabel labels[] = {{"instance", "a\"b"}};
  auto formatted = FormatPrometheus(SomeStats(), labels);
  REQUIRE_OK(formatted);
  const std::string good = *formatted;
  REQUIRE(Parse(good).errors.empty());
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    const size_t at = t.find(from);
    REQUIRE(at != std::string::npos);
    t.replace(at, from.size(), to);
    return t;
  };
  auto replace_all = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    for (size_t at = t.find(from); at != std::string::npos; at = t.find(from, at + to.size())) {
      t.replace(at, from.size(), to);
    }
    return t;
  };
  auto line_of = [&](const std::string& prefix) {
    const size_t at = good.find(prefix);
    REQUIRE(at != std::string::npos);
    return good.substr(at, good.find('\n', at) - at + 1);
  };
  std::vector<std::pair<std::string, std::string>> broken = {
      {"bad metric name", replace("kvtier_hits_total{", "kvtier-hits_total{")},
      {"sample before TYPE",
       replace("# TYPE kvtier_used_blocks gauge\n", "") + "# TYPE kvtier_used_blocks gauge\n"},
      {"TYPE twice", good + line_of("# TYPE kvtier_leases_live")},
      {"HELP missing", replace(line_of("# HELP kvtier_leases_live"), "")},
      {"counter without _total", replace_all("kvtier_match_calls_total", "kvtier_match_calls")},
      {"unescaped quote", replace("a\\\"b", "a\"b")},
      {"raw newline", replace("a\\\"b", "a\nb")},
      {"bucket not cumulative",
       replace("kvtier_load_latency_seconds_bucket{instance=\"a\\\"b\",le=\"2e-06\"} 3",
               "kvtier_load_latency_seconds_bucket{instance=\"a\\\"b\",le=\"2e-06\"} 1")},
      {"+Inf != count", replace("kvtier_load_latency_seconds_count{instance=\"a\\\"b\"} 6",
                                "kvtier_load_latency_seconds_count{instance=\"a\\\"b\"} 7")},
      {"no +Inf bucket",
       replace("kvtier_load_latency_seconds_bucket{instance=\"a\\\"b\",le=\"+Inf\"} 6\n", "")},
      {"le out of order", replace("le=\"4e-06\"", "le=\"1e-07\"")},
      {"family split", good + line_of("kvtier_hits_total{")},
      {"no final newline", good.substr(0, good.size() - 1)},
  };
  for (const auto& [what, text] : broken) {
    CAPTURE(what);
    CHECK_FALSE(Parse(text).errors.empty());
  }
}

}  // namespace
}  // namespace kvtier
