// FormatPrometheus: tables of (metric, field) rendered in the text format, version 0.0.4.
//
// Per-tier figures are one family each with a tier label, so a dashboard sums or splits them by
// tier; cache-wide figures have none. The bytes_h2d/bytes_d2h/bytes_disk_* and demotions/promotions
// fields of CacheStats are not exported on their own: they are the per-tier bytes_in/bytes_out and
// demotions/promotions families.
#include "kvtier/prometheus.h"

#include <charconv>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

struct TierMetric {
  const char* name;
  const char* type;  // "counter" or "gauge"
  const char* help;
  uint64_t TierStats::*field;
};

constexpr TierMetric kTierMetrics[] = {
    {"kvtier_capacity_blocks", "gauge", "Slots in the tier.", &TierStats::capacity_blocks},
    {"kvtier_used_blocks", "gauge", "Slots holding a block or leased.", &TierStats::used_blocks},
    {"kvtier_pinned_blocks", "gauge", "Resident blocks pinned by a lease or a copy in flight.",
     &TierStats::pinned_blocks},
    {"kvtier_in_flight_blocks", "gauge", "Blocks being copied into the tier.",
     &TierStats::in_flight_blocks},
    {"kvtier_queue_depth", "gauge", "I/O operations submitted and not completed (disk).",
     &TierStats::queue_depth},
    {"kvtier_hits_total", "counter", "Blocks Match() found first in this tier.", &TierStats::hits},
    {"kvtier_misses_total", "counter", "Blocks Match() found neither in this tier nor above it.",
     &TierStats::misses},
    {"kvtier_inserts_total", "counter", "Blocks that started residing in the tier.",
     &TierStats::inserts},
    {"kvtier_evictions_total", "counter", "Blocks removed from the tier to make room.",
     &TierStats::evictions},
    {"kvtier_drops_total", "counter", "Evictions that left the block in no tier.",
     &TierStats::drops},
    {"kvtier_demotions_total", "counter", "Copies started from the tier to the one below.",
     &TierStats::demotions},
    {"kvtier_promotions_total", "counter", "Copies started into the tier from the one below.",
     &TierStats::promotions},
    {"kvtier_bytes_in_total", "counter", "Bytes copied into the tier.", &TierStats::bytes_in},
    {"kvtier_bytes_out_total", "counter", "Bytes copied out of the tier.", &TierStats::bytes_out},
    {"kvtier_fill_failures_total", "counter", "Copies into the tier that failed.",
     &TierStats::fill_failures},
    {"kvtier_corrupt_reads_total", "counter", "Reads whose bytes failed to verify (disk).",
     &TierStats::corrupt_reads},
    {"kvtier_io_errors_total", "counter", "Reads and writes the storage failed (disk).",
     &TierStats::io_errors},
};

struct CacheMetric {
  const char* name;
  const char* type;
  const char* help;
  uint64_t CacheStats::*field;
};

constexpr CacheMetric kCacheMetrics[] = {
    {"kvtier_match_calls_total", "counter", "Match() calls.", &CacheStats::match_calls},
    {"kvtier_blocks_queried_total", "counter", "Keys passed to Match().",
     &CacheStats::blocks_queried},
    {"kvtier_blocks_missed_total", "counter", "Keys at or after the first miss of each Match().",
     &CacheStats::blocks_missed},
    {"kvtier_blocks_loaded_total", "counter", "Blocks a Load() handed to a lease.",
     &CacheStats::blocks_loaded},
    {"kvtier_blocks_committed_total", "counter", "New blocks published by Commit().",
     &CacheStats::blocks_committed},
    {"kvtier_blocks_commit_shared_total", "counter",
     "Commit() keys already on the device from elsewhere (that copy kept, the lease's not "
     "published).",
     &CacheStats::blocks_commit_shared},
    {"kvtier_blocks_stored_total", "counter",
     "Connector stores: blocks copied from the engine's device blocks to the host tier.",
     &CacheStats::blocks_stored},
    {"kvtier_blocks_store_skipped_total", "counter",
     "Connector stores: keys already cached here, not copied.", &CacheStats::blocks_store_skipped},
    {"kvtier_transfer_failures_total", "counter", "Copies that failed; their blocks became misses.",
     &CacheStats::transfer_failures},
    {"kvtier_loads_failed_total", "counter", "Loads that ended with an error.",
     &CacheStats::loads_failed},
    {"kvtier_loads_partial_total", "counter",
     "Failed Loads that still delivered their first blocks (0 < blocks_loaded < blocks).",
     &CacheStats::loads_partial},
    {"kvtier_blocks_load_lost_total", "counter",
     "Blocks failed Loads did not deliver (from the first failed block on): recomputed.",
     &CacheStats::blocks_load_lost},
    {"kvtier_codec_lossy_blocks_loaded_total", "counter",
     "Blocks loaded through a lossy host codec (within its error bound).",
     &CacheStats::codec_lossy_blocks_loaded},
    {"kvtier_codec_refused_blocks_total", "counter",
     "Promotions refused: the block was encoded by another codec.",
     &CacheStats::codec_refused_blocks},
    {"kvtier_codec_lossy_blocks_replaced_total", "counter",
     "Lossy device copies (decoded by a codec) that a Commit of the recomputed block replaced.",
     &CacheStats::codec_lossy_blocks_replaced},
    {"kvtier_leases_live", "gauge", "DeviceLeases not yet released.", &CacheStats::leases_live},
    {"kvtier_transfers_in_flight", "gauge", "Load transfers whose copies have not finished.",
     &CacheStats::transfers_in_flight},
    {"kvtier_index_work_total", "counter",
     "Entries and slots the index visited (lookups, eviction candidates); grows with requests, "
     "not capacity.",
     &CacheStats::index_work},
    {"kvtier_events_dropped_total", "counter",
     "KV events lost because the queue (Options.events.capacity) was full.",
     &CacheStats::events_dropped},
    {"kvtier_disk_recovered_blocks", "gauge", "Blocks served from a previous run's directory.",
     &CacheStats::disk_recovered_blocks},
    {"kvtier_disk_recovery_dropped_blocks", "gauge",
     "Disk slots found invalid, stale or orphaned at start.", &CacheStats::disk_recovery_dropped},
};

struct RemoteMetric {
  const char* name;
  const char* type;
  const char* help;
  uint64_t RemoteStats::*field;
};

constexpr RemoteMetric kRemoteMetrics[] = {
    {"kvtier_remote_hits_total", "counter",
     "Blocks Match() found in the remote tier past the local prefix.", &RemoteStats::hits},
    {"kvtier_remote_lookups_total", "counter", "Blocks Match() asked the remote tier about.",
     &RemoteStats::lookups},
    {"kvtier_remote_lookup_timeouts_total", "counter",
     "Match() calls whose remote lookup ran out of its budget.", &RemoteStats::lookup_timeouts},
    {"kvtier_remote_reads_total", "counter", "Blocks read from the remote tier and verified.",
     &RemoteStats::reads},
    {"kvtier_remote_read_misses_total", "counter",
     "Remote reads that found no value (evicted or expired there).", &RemoteStats::read_misses},
    {"kvtier_remote_corrupt_reads_total", "counter",
     "Remote values that failed to verify (treated as misses).", &RemoteStats::corrupt_reads},
    {"kvtier_remote_read_errors_total", "counter", "Remote reads the store failed.",
     &RemoteStats::read_errors},
    {"kvtier_remote_writes_total", "counter", "Blocks published to the remote tier.",
     &RemoteStats::writes},
    {"kvtier_remote_write_errors_total", "counter", "Publications the store failed.",
     &RemoteStats::write_errors},
    {"kvtier_remote_writes_skipped_total", "counter",
     "Publications skipped: the block was known to be there.", &RemoteStats::writes_skipped},
    {"kvtier_remote_bytes_read_total", "counter", "Payload bytes of verified remote reads.",
     &RemoteStats::bytes_read},
    {"kvtier_remote_bytes_written_total", "counter", "Payload bytes of acknowledged remote writes.",
     &RemoteStats::bytes_written},
    {"kvtier_remote_redirects_total", "counter", "MOVED and ASK replies followed.",
     &RemoteStats::redirects},
    {"kvtier_remote_connects_total", "counter", "Connections opened to the cluster's nodes.",
     &RemoteStats::connects},
};

struct HistogramMetric {
  const char* name;
  const char* help;
  LatencyHistogram CacheStats::*field;
};

constexpr HistogramMetric kHistograms[] = {
    {"kvtier_load_latency_seconds", "Load() call to its transfer finishing.",
     &CacheStats::load_latency},
    {"kvtier_demotion_latency_seconds",
     "A batch of device-to-host copies, enqueued to copied (store to host).",
     &CacheStats::demotion_latency},
    {"kvtier_disk_write_latency_seconds", "One block's disk write, submitted to completed.",
     &CacheStats::disk_write_latency},
    {"kvtier_disk_read_latency_seconds", "One block's disk read, submitted to verified.",
     &CacheStats::disk_read_latency},
    {"kvtier_remote_read_latency_seconds", "One Load()'s pipelined remote reads.",
     &CacheStats::remote_read_latency},
    {"kvtier_remote_write_latency_seconds", "One batch of remote writes (publications).",
     &CacheStats::remote_write_latency},
};

// Shortest text that reads back as `v` ("1e-06", "0.131072", "8.388608").
std::string FormatDouble(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

// Label values: backslash, double quote and line feed escaped, as the format asks.
std::string EscapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

bool IsLabelName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

class Writer {
 public:
  // `constant`: the caller's labels, already rendered as name="value" pairs joined by commas.
  explicit Writer(std::string constant) : constant_(std::move(constant)) {}

  // HELP text escapes backslash and line feed (not double quotes).
  void Family(const char* name, const char* type, const char* help) {
    std::string escaped;
    for (const char* p = help; *p != 0; ++p) {
      if (*p == '\\') {
        escaped += "\\\\";
      } else if (*p == '\n') {
        escaped += "\\n";
      } else {
        escaped += *p;
      }
    }
    absl::StrAppend(&out_, "# HELP ", name, " ", escaped, "\n# TYPE ", name, " ", type, "\n");
  }

  // One sample; `label`/`value` is an extra label (tier or le) when label is not empty.
  void Sample(std::string_view name, std::string_view label, std::string_view label_value,
              std::string_view value) {
    out_ += name;
    if (!constant_.empty() || !label.empty()) {
      out_ += '{';
      out_ += constant_;
      if (!label.empty()) {
        if (!constant_.empty()) out_ += ',';
        out_.append(label).append("=\"").append(EscapeLabelValue(label_value)).append("\"");
      }
      out_ += '}';
    }
    out_.append(" ").append(value).append("\n");
  }

  std::string Take() { return std::move(out_); }

 private:
  const std::string constant_;
  std::string out_;
};

constexpr const char* kTierLabels[] = {"device", "host", "disk"};

std::string Format(const CacheStats& stats, std::string constant) {
  Writer w(std::move(constant));
  const TierStats* tiers[] = {&stats.device, &stats.host, &stats.disk};
  for (const TierMetric& m : kTierMetrics) {
    w.Family(m.name, m.type, m.help);
    for (size_t t = 0; t < std::size(tiers); ++t) {
      w.Sample(m.name, "tier", kTierLabels[t], absl::StrCat(tiers[t]->*m.field));
    }
  }
  for (const CacheMetric& m : kCacheMetrics) {
    w.Family(m.name, m.type, m.help);
    w.Sample(m.name, "", "", absl::StrCat(stats.*m.field));
  }
  for (const RemoteMetric& m : kRemoteMetrics) {
    w.Family(m.name, m.type, m.help);
    w.Sample(m.name, "", "", absl::StrCat(stats.remote.*m.field));
  }
  w.Family("kvtier_disk_buffered_io", "gauge",
           "1 when the disk tier runs without O_DIRECT (allow_buffered), else 0.");
  w.Sample("kvtier_disk_buffered_io", "", "", stats.disk_buffered_io ? "1" : "0");
  for (const HistogramMetric& m : kHistograms) {
    const LatencyHistogram& h = stats.*m.field;
    w.Family(m.name, "histogram", m.help);
    const std::string bucket = absl::StrCat(m.name, "_bucket");
    uint64_t cumulative = 0;
    for (int i = 0; i < LatencyHistogram::kFinite; ++i) {
      cumulative += h.buckets[i];
      w.Sample(bucket, "le", FormatDouble(LatencyHistogram::UpperBoundNanos(i) / 1e9),
               absl::StrCat(cumulative));
    }
    // +Inf is the count itself: the two must agree even if a snapshot's count were inconsistent.
    w.Sample(bucket, "le", "+Inf", absl::StrCat(h.count));
    w.Sample(absl::StrCat(m.name, "_sum"), "", "", FormatDouble(h.sum_nanos / 1e9));
    w.Sample(absl::StrCat(m.name, "_count"), "", "", absl::StrCat(h.count));
  }
  return w.Take();
}

}  // namespace

std::string FormatPrometheus(const CacheStats& stats) { return Format(stats, ""); }

absl::StatusOr<std::string> FormatPrometheus(const CacheStats& stats,
                                             std::span<const PrometheusLabel> labels) {
  std::string constant;
  absl::flat_hash_set<std::string_view> seen;
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& name = labels[i].name;
    if (!IsLabelName(name) || name.rfind("__", 0) == 0 || name == "tier" || name == "le" ||
        !seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FormatPrometheus: labels[", i, "].name \"", EscapeLabelValue(name),
          "\" is malformed, reserved or repeated (vs [a-zA-Z_][a-zA-Z0-9_]*, not __*, tier, le)"));
    }
    if (!constant.empty()) constant += ',';
    absl::StrAppend(&constant, name, "=\"", EscapeLabelValue(labels[i].value), "\"");
  }
  return Format(stats, std::move(constant));
}

}  // namespace kvtier
