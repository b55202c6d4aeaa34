// FormatPrometheus: a CacheStats snapshot in the Prometheus text exposition format, version 0.0.4,
// for an engine's /metrics endpoint.
//
//   std::string body = kvtier::FormatPrometheus(cache->Stats());
//   // serve with Content-Type: text/plain; version=0.0.4
//
// Every metric is named kvtier_*; counters end in _total; per-tier metrics carry
// tier="device|host|disk"; latencies are histograms in seconds (cumulative _bucket{le=...} up to
// le="+Inf", then _sum and _count). Each family's # HELP and # TYPE lines precede its samples.
// Thread safety: pure functions of their arguments.
#ifndef KVTIER_PROMETHEUS_H_
#define KVTIER_PROMETHEUS_H_

#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "kvtier/stats.h"

namespace kvtier {

// A constant label added to every sample, e.g. {"instance", "gpu0"} to tell caches apart.
struct PrometheusLabel {
  std::string name;   // [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", not "tier" or "le"
  std::string value;  // any UTF-8; backslash, double quote and newline are escaped
};

// The whole exposition: every counter, gauge and histogram of `stats`, ending in a newline.
// O(number of metrics).
std::string FormatPrometheus(const CacheStats& stats);

// The same with `labels` on every sample (before tier and le). kInvalidArgument for a label name
// that is malformed, reserved ("__" prefix), used twice, or one kvtier sets (tier, le).
absl::StatusOr<std::string> FormatPrometheus(const CacheStats& stats,
                                             std::span<const PrometheusLabel> labels);

}  // namespace kvtier

#endif  // KVTIER_PROMETHEUS_H_
