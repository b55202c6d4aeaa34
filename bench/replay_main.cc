// kvtier-replay: replays a Mooncake-format request trace through kvtier's policies and cache.
//
//   kvtier-replay --trace conversation_trace.jsonl --policy all --capacity 1%,5%,20%
//
// Prints one row per (mode, policy, capacity) run: hit ratios (all tiers, per tier, per request),
// evictions, bytes moved per hop and replay speed; --csv/--json write the same for machines, and
// --plot draws hit ratio against capacity with gnuplot. Usage errors exit 2, failed runs exit 1.
// See docs/policies.md.
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/replay.h"
#include "bench/trace.h"
#include "kvtier/options.h"
#include "kvtier/policy.h"
#include "lib/options_fields.h"

namespace kvtier::replay {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] = R"(usage: kvtier-replay --trace FILE [options]

Replays a Mooncake-format trace (JSON lines with hash_ids) through kvtier's eviction policies.

  --trace FILE            the trace (required)
  --mode LIST             cache (default): a real kvtier::Cache, per request Match, AllocateDevice,
                          Load, Commit, Release; a hit is a prefix block served without recompute.
                          flat: one tier, one lookup per block access, as libCacheSim does.
                          Both: --mode flat,cache
  --policy LIST|all       registered policy names (default lru); all = every registered policy
  --capacity LIST         device tier (flat: the only tier) sizes to sweep, each in blocks (1828),
                          percent of the trace's unique blocks (5%), or bytes (16GiB, 512MB);
                          default 10%. Alias: --device-capacity
  --host-capacity C       add a host tier (cache mode), same units
  --disk-capacity C       add a disk tier below the host tier (cache mode), same units
  --disk-dir DIR          with --full and a disk tier: where its files go (a fresh subdirectory,
                          removed afterwards)
  --full                  full mode: real bytes on the emulated device, host pool and disk files
                          (default: metadata only, no byte moves)
  --block-bytes SIZE      bytes of one block, all layers, K and V (default 64MiB: Llama-3.1-8B fp16
                          at 512 tokens); sizes byte capacities and bytes moved
  --layers N              layers per block (default 32); block bytes must divide by 2*N
  --tokens-per-block N    tokens of one block (default 512, the Mooncake traces')
  --param KEY=VALUE       a policy parameter (repeatable), passed to every policy
  --no-demote             drop device victims instead of writing them back to the host
  --write-through         copy committed blocks to the host tier at once
  --codec NAME            cache mode: Options.host.codec (none, fp8_e4m3, int8, int4; blocks are
                          fp16 K and V): host and disk keep their bytes (--host-capacity and
                          --disk-capacity count raw blocks) and hold more encoded ones
  --codec-group-size N    int8/int4 scale group (default 64)
  --replicas N            cache mode: N caches (each with the tiers above) sharing the remote
                          tier; request i goes to replica i % N (default 1; > 1 needs --remote)
  --remote HOST:PORT,...  a Redis Cluster as every replica's remote tier (needs full mode:
                          switched on if not given; keep --block-bytes small)
  --remote-scope S        the remote tier's scope (default kvtier-replay-<pid>: a run of its own)
  --remote-publish MODE   write-through (default) or write-back
  --option PATH=VALUE     set any kvtier::Options field by its path on every cache (cache mode;
                          repeatable), after the flags above: --option remote.timeout_ms=200
                          --option disk.queue_depth=128 --option host.policy=sieve
  --list-options          print every PATH with its type and default, and exit
  --max-requests N        replay only the first N requests
  --repeat N              replay each configuration N times; speed = the median run's (default 1)
  --time-limit SECONDS    stop a run that takes longer (its row reports the error; default: none)
  --csv FILE              write the results as CSV ('-' = stdout)
  --json FILE             write the results as JSON ('-' = stdout)
  --plot FILE.png         draw hit ratio vs capacity per policy (needs gnuplot)
  --plugin FILE.so        load a shared object that registers policies (repeatable)
  --progress / --quiet    force / suppress the progress line on stderr (default: when a terminal)
  --list-policies         print the registered policies and exit
  --help                  this text
)";

struct Args {
  std::string trace;
  std::vector<Mode> modes = {Mode::kCache};
  std::vector<std::string> policies = {"lru"};
  bool all_policies = false;
  std::vector<std::string> capacities = {"10%"};
  std::string host_capacity, disk_capacity, disk_dir;
  bool full = false;
  std::string block_bytes = "64MiB";
  uint32_t layers = 32;
  uint32_t tokens_per_block = 512;
  PolicyParams params;
  bool demote = true, write_through = false;
  std::string codec = "none";
  uint32_t codec_group_size = 64;
  uint64_t max_requests = 0;
  uint32_t repeat = 1;
  double time_limit_seconds = 0;
  std::string csv, json, plot;
  std::vector<std::string> plugins;
  int progress = -1;  // -1: when stderr is a terminal
  bool list_policies = false;
  uint32_t replicas = 1;
  std::string remote, remote_scope;
  RemotePublish remote_publish = RemotePublish::kWriteThrough;
  std::vector<std::pair<std::string, std::string>> options;  // --option PATH=VALUE, in order
  bool list_options = false;
};

// A usage error: print, exit 2.
[[noreturn]] void Usage(absl::string_view message) {
  std::fprintf(stderr, "kvtier-replay: %.*s\n(--help for usage)\n",
               static_cast<int>(message.size()), message.data());
  std::exit(2);
}

uint32_t ParseU32(absl::string_view flag, absl::string_view value, uint32_t min) {
  uint32_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v < min) {
    Usage(absl::StrCat(flag, ": '", value, "' is not an integer >= ", min));
  }
  return v;
}

// "123" -> 123, "64KiB"/"64KB"/"64K" -> bytes; binary for KiB/K, decimal for KB. nullopt if bad.
std::optional<uint64_t> ParseBytes(absl::string_view text, bool bare_is_bytes) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  double number = 0;
  if (i == 0 || !absl::SimpleAtod(text.substr(0, i), &number) || number < 0) return std::nullopt;
  const absl::string_view unit = text.substr(i);
  struct Unit {
    absl::string_view name;
    double factor;
  };
  static constexpr Unit kUnits[] = {{"B", 1},    {"K", 1024.0},          {"KiB", 1024.0},
                                    {"KB", 1e3}, {"M", 1048576.0},       {"MiB", 1048576.0},
                                    {"MB", 1e6}, {"G", 1073741824.0},    {"GiB", 1073741824.0},
                                    {"GB", 1e9}, {"T", 1099511627776.0}, {"TiB", 1099511627776.0},
                                    {"TB", 1e12}};
  double factor = 0;
  if (unit.empty()) {
    if (!bare_is_bytes) return std::nullopt;
    factor = 1;
  }
  for (const Unit& u : kUnits) {
    if (unit == u.name) factor = u.factor;
  }
  if (factor == 0 || number * factor >= 1.8e19) return std::nullopt;
  return static_cast<uint64_t>(number * factor);
}

struct Capacity {
  std::string text;     // as given
  uint32_t blocks = 0;  // resolved
  double percent = 0;   // of the trace's unique blocks
};

// "1828" blocks, "5%" of unique blocks (rounded to nearest, as the libCacheSim reference), or a
// byte size. Usage error (exit 2) when malformed or zero blocks.
Capacity ParseCapacity(absl::string_view flag, absl::string_view text, uint32_t unique_blocks,
                       uint64_t block_bytes) {
  Capacity c{.text = std::string(text)};
  double blocks = 0;
  if (!text.empty() && text.back() == '%') {
    double pct = 0;
    if (!absl::SimpleAtod(text.substr(0, text.size() - 1), &pct) || !(pct > 0) || pct > 1e6) {
      Usage(absl::StrCat(flag, ": '", text, "' is not a positive percentage (e.g. 5%)"));
    }
    blocks = std::llround(unique_blocks * pct / 100.0);
  } else if (uint64_t n = 0; absl::SimpleAtoi(text, &n)) {
    blocks = static_cast<double>(n);
  } else if (std::optional<uint64_t> bytes = ParseBytes(text, false); bytes.has_value()) {
    blocks = static_cast<double>(*bytes / block_bytes);
  } else {
    Usage(absl::StrCat(flag, ": '", text,
                       "' is not a capacity: blocks (1828), percent of unique blocks (5%) or "
                       "bytes (16GiB)"));
  }
  if (blocks < 1) {
    Usage(absl::StrCat(flag, ": '", text, "' is 0 blocks (", unique_blocks, " unique blocks of ",
                       block_bytes, " bytes in the trace)"));
  }
  if (blocks > UINT32_MAX - 1) Usage(absl::StrCat(flag, ": '", text, "' is over 2^32 blocks"));
  c.blocks = static_cast<uint32_t>(blocks);
  c.percent = unique_blocks == 0 ? 0 : 100.0 * c.blocks / unique_blocks;
  return c;
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  std::vector<std::string> policies;
  bool policies_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    bool has_value = false;
    if (const size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) Usage(absl::StrCat(flag, " needs a value"));
      return argv[++i];
    };
    auto no_value = [&] {
      if (has_value) Usage(absl::StrCat(flag, " takes no value"));
    };
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (flag == "--trace") {
      a.trace = next();
    } else if (flag == "--mode") {
      a.modes.clear();
      for (absl::string_view m : absl::StrSplit(next(), ',', absl::SkipEmpty())) {
        if (m == "flat") {
          a.modes.push_back(Mode::kFlat);
        } else if (m == "cache") {
          a.modes.push_back(Mode::kCache);
        } else {
          Usage(absl::StrCat("--mode: '", m, "' is not flat or cache"));
        }
      }
      if (a.modes.empty()) Usage("--mode: empty");
    } else if (flag == "--policy") {
      policies_set = true;
      for (absl::string_view p : absl::StrSplit(next(), ',', absl::SkipEmpty())) {
        if (p == "all") {
          a.all_policies = true;
        } else {
          policies.emplace_back(p);
        }
      }
    } else if (flag == "--capacity" || flag == "--device-capacity") {
      a.capacities = absl::StrSplit(next(), ',', absl::SkipEmpty());
      if (a.capacities.empty()) Usage(absl::StrCat(flag, ": empty"));
    } else if (flag == "--host-capacity") {
      a.host_capacity = next();
    } else if (flag == "--disk-capacity") {
      a.disk_capacity = next();
    } else if (flag == "--disk-dir") {
      a.disk_dir = next();
    } else if (flag == "--full") {
      no_value();
      a.full = true;
    } else if (flag == "--block-bytes") {
      a.block_bytes = next();
    } else if (flag == "--layers") {
      a.layers = ParseU32(flag, next(), 1);
    } else if (flag == "--tokens-per-block") {
      a.tokens_per_block = ParseU32(flag, next(), 1);
    } else if (flag == "--param") {
      const std::string kv = next();
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0)
        Usage(absl::StrCat("--param: '", kv, "' is not KEY=VALUE"));
      a.params[kv.substr(0, eq)] = kv.substr(eq + 1);
    } else if (flag == "--no-demote") {
      no_value();
      a.demote = false;
    } else if (flag == "--write-through") {
      no_value();
      a.write_through = true;
    } else if (flag == "--codec") {
      a.codec = next();
    } else if (flag == "--codec-group-size") {
      a.codec_group_size = ParseU32(flag, next(), 1);
    } else if (flag == "--replicas") {
      a.replicas = ParseU32(flag, next(), 1);
    } else if (flag == "--remote") {
      a.remote = next();
      if (a.remote.empty()) Usage("--remote: empty");
    } else if (flag == "--remote-scope") {
      a.remote_scope = next();
    } else if (flag == "--remote-publish") {
      const std::string v = next();
      if (v == "write-through") {
        a.remote_publish = RemotePublish::kWriteThrough;
      } else if (v == "write-back") {
        a.remote_publish = RemotePublish::kWriteBack;
      } else {
        Usage(absl::StrCat("--remote-publish: '", v, "' is not write-through or write-back"));
      }
    } else if (flag == "--option") {
      const std::string pv = next();
      const size_t eq = pv.find('=');
      if (eq == std::string::npos || eq == 0) {
        Usage(absl::StrCat("--option: '", pv, "' is not PATH=VALUE (--list-options)"));
      }
      // Checked now against defaults, so a typo is a usage error before the trace is read.
      Options scratch;
      const std::string path = pv.substr(0, eq), text = pv.substr(eq + 1);
      if (absl::Status s = internal::SetOption(scratch, path, text); !s.ok()) {
        Usage(absl::StrCat("--option: ", s.message()));
      }
      a.options.emplace_back(path, text);
    } else if (flag == "--list-options") {
      no_value();
      a.list_options = true;
    } else if (flag == "--max-requests") {
      a.max_requests = ParseU32(flag, next(), 1);
    } else if (flag == "--repeat") {
      a.repeat = ParseU32(flag, next(), 1);
    } else if (flag == "--time-limit") {
      const std::string v = next();
      if (!absl::SimpleAtod(v, &a.time_limit_seconds) || !(a.time_limit_seconds > 0)) {
        Usage(absl::StrCat("--time-limit: '", v, "' is not a positive number of seconds"));
      }
    } else if (flag == "--csv") {
      a.csv = next();
    } else if (flag == "--json") {
      a.json = next();
    } else if (flag == "--plot") {
      a.plot = next();
    } else if (flag == "--plugin") {
      a.plugins.push_back(next());
    } else if (flag == "--progress") {
      no_value();
      a.progress = 1;
    } else if (flag == "--quiet") {
      no_value();
      a.progress = 0;
    } else if (flag == "--list-policies") {
      no_value();
      a.list_policies = true;
    } else {
      Usage(absl::StrCat("unknown argument '", argv[i], "'"));
    }
  }
  if (policies_set) a.policies = policies;
  return a;
}

// ---- output ----

std::string Bytes(uint64_t b) {
  if (b == 0) return "0";
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, kUnits[u]);
}

struct Run {
  Mode mode;
  std::string policy;
  Capacity capacity;
  absl::StatusOr<ReplayResult> result;
};

struct Setup {
  const Trace* trace;
  uint32_t host_blocks = 0, disk_blocks = 0;
  uint64_t block_bytes = 0;
  bool full = false;
};

void PrintTable(const Setup& setup, const std::vector<Run>& runs) {
  const bool cache =
      std::any_of(runs.begin(), runs.end(), [](const Run& r) { return r.mode == Mode::kCache; });
  const bool host = cache && setup.host_blocks > 0, disk = cache && setup.disk_blocks > 0;
  std::vector<std::string> head = {"mode", "policy",     "capacity",  "%unique",
                                   "hit",  "prefix hit", "req prefix"};
  if (host) head.insert(head.end(), {"device hit", "host hit"});
  if (disk) head.push_back("disk hit");
  head.push_back("evict dev");
  if (host) head.push_back("evict host");
  if (disk) head.push_back("evict disk");
  if (host) head.insert(head.end(), {"h2d", "d2h"});
  if (disk) head.insert(head.end(), {"host>disk", "disk>host"});
  head.push_back("M acc/s");
  std::vector<std::vector<std::string>> rows = {head};
  std::vector<std::string> errors;
  for (const Run& run : runs) {
    std::vector<std::string> row = {ModeName(run.mode), run.policy,
                                    absl::StrCat(run.capacity.blocks),
                                    absl::StrFormat("%.2f%%", run.capacity.percent)};
    if (!run.result.ok()) {
      row.push_back("error");
      rows.push_back(row);
      errors.push_back(absl::StrCat(run.policy, " ", ModeName(run.mode), " ", run.capacity.text,
                                    ": ", run.result.status().ToString()));
      continue;
    }
    const ReplayResult& r = *run.result;
    const bool c = run.mode == Mode::kCache;
    auto f4 = [](double v) { return absl::StrFormat("%.4f", v); };
    row.insert(row.end(),
               {f4(r.hit_ratio()), f4(r.prefix_hit_ratio()), f4(r.mean_request_prefix_ratio())});
    if (host) {
      row.push_back(f4(r.tier_hit_ratio(Tier::kDevice)));
      row.push_back(c ? f4(r.tier_hit_ratio(Tier::kHost)) : "-");
    }
    if (disk) row.push_back(c ? f4(r.tier_hit_ratio(Tier::kDisk)) : "-");
    row.push_back(absl::StrCat(r.tiers[0].evictions));
    if (host) row.push_back(c ? absl::StrCat(r.tiers[1].evictions) : "-");
    if (disk) row.push_back(c ? absl::StrCat(r.tiers[2].evictions) : "-");
    if (host) {
      row.push_back(c ? Bytes(r.bytes_h2d) : "-");
      row.push_back(c ? Bytes(r.bytes_d2h) : "-");
    }
    if (disk) {
      row.push_back(c ? Bytes(r.bytes_disk_written) : "-");
      row.push_back(c ? Bytes(r.bytes_disk_read) : "-");
    }
    row.push_back(absl::StrFormat("%.2f", r.accesses_per_second() / 1e6));
    rows.push_back(row);
  }
  std::vector<size_t> width(head.size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const bool left = i < 2;
      line += i == 0 ? "" : "  ";
      line += left ? absl::StrFormat("%-*s", width[i], row[i])
                   : absl::StrFormat("%*s", width[i], row[i]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
  }
  for (const std::string& e : errors) std::printf("error: %s\n", e.c_str());
}

// With a remote tier: per run, a row per replica and their total.
void PrintReplicas(const std::vector<Run>& runs) {
  for (const Run& run : runs) {
    if (!run.result.ok() || run.result->replicas.empty()) continue;
    const ReplayResult& r = *run.result;
    std::printf("\nremote tier, %s %s: %zu replicas, requests round-robin\n", run.policy.c_str(),
                run.capacity.text.c_str(), r.replicas.size());
    const std::vector<std::string> head = {
        "replica",     "requests",      "queried",   "prefix hit", "remote hits",
        "remote hit",  "cross-replica", "cross hit", "published",  "remote reads",
        "read misses", "corrupt",       "writes"};
    std::vector<std::vector<std::string>> rows = {head};
    auto row = [&](const std::string& name, const ReplicaReplayStats& s) {
      auto f4 = [](double v) { return absl::StrFormat("%.4f", v); };
      rows.push_back({name, absl::StrCat(s.requests), absl::StrCat(s.blocks_queried),
                      f4(s.prefix_hit_ratio()), absl::StrCat(s.remote_hit_blocks),
                      f4(s.remote_hit_ratio()), absl::StrCat(s.cross_replica_hit_blocks),
                      f4(s.cross_replica_hit_ratio()), absl::StrCat(s.published_blocks),
                      absl::StrCat(s.remote.reads), absl::StrCat(s.remote.read_misses),
                      absl::StrCat(s.remote.corrupt_reads), absl::StrCat(s.remote.writes)});
    };
    for (size_t i = 0; i < r.replicas.size(); ++i) row(absl::StrCat(i), r.replicas[i]);
    row("total", r.remote_total);
    std::vector<size_t> width(head.size(), 0);
    for (const auto& cells : rows) {
      for (size_t i = 0; i < cells.size(); ++i) width[i] = std::max(width[i], cells[i].size());
    }
    for (const auto& cells : rows) {
      std::string line;
      for (size_t i = 0; i < cells.size(); ++i) {
        line += i == 0 ? absl::StrFormat("%-*s", width[i], cells[i])
                       : absl::StrFormat("  %*s", width[i], cells[i]);
      }
      std::printf("%s\n", line.c_str());
    }
    std::printf("mismatched bytes (loaded blocks vs what their publisher computed): %" PRIu64 "\n",
                r.mismatched_bytes);
  }
}

FILE* OpenOut(const std::string& path) {
  if (path == "-") return stdout;
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) Usage(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  return f;
}

void CloseOut(FILE* f) {
  if (f != stdout) std::fclose(f);
}

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// Every field of a run, in a fixed order, for CSV and JSON (numbers unquoted).
std::vector<std::pair<std::string, std::string>> Fields(const Setup& setup, const Run& run) {
  std::vector<std::pair<std::string, std::string>> f = {
      {"mode", JsonString(ModeName(run.mode))},
      {"policy", JsonString(run.policy)},
      {"payload", run.mode == Mode::kCache && setup.full ? "true" : "false"},
      {"capacity", JsonString(run.capacity.text)},
      {"capacity_blocks", absl::StrCat(run.capacity.blocks)},
      {"capacity_pct_unique", absl::StrFormat("%.4f", run.capacity.percent)},
      {"host_blocks", absl::StrCat(run.mode == Mode::kCache ? setup.host_blocks : 0)},
      {"disk_blocks", absl::StrCat(run.mode == Mode::kCache ? setup.disk_blocks : 0)},
      {"block_bytes", absl::StrCat(setup.block_bytes)},
  };
  if (!run.result.ok()) {
    f.push_back({"error", JsonString(run.result.status().ToString())});
    return f;
  }
  const ReplayResult& r = *run.result;
  auto num = [](double v) { return absl::StrFormat("%.6f", v); };
  f.insert(f.end(), {{"requests", absl::StrCat(r.requests)},
                     {"block_accesses", absl::StrCat(r.block_accesses)},
                     {"hit_blocks", absl::StrCat(r.hit_blocks)},
                     {"hit_ratio", num(r.hit_ratio())},
                     {"prefix_hit_blocks", absl::StrCat(r.prefix_hit_blocks)},
                     {"prefix_hit_ratio", num(r.prefix_hit_ratio())},
                     {"mean_request_prefix_ratio", num(r.mean_request_prefix_ratio())},
                     {"token_hit_ratio", num(r.token_hit_ratio())},
                     {"matched_blocks", absl::StrCat(r.matched_blocks)},
                     {"capped_blocks", absl::StrCat(r.capped_blocks)}});
  for (int t = 0; t < kNumTiers; ++t) {
    const std::string name = TierName(static_cast<Tier>(t));
    const TierReplayStats& s = r.tiers[t];
    f.insert(f.end(), {{name + "_capacity_blocks", absl::StrCat(s.capacity_blocks)},
                       {name + "_hits", absl::StrCat(s.hits)},
                       {name + "_hit_ratio", num(r.tier_hit_ratio(static_cast<Tier>(t)))},
                       {name + "_inserts", absl::StrCat(s.inserts)},
                       {name + "_evictions", absl::StrCat(s.evictions)},
                       {name + "_drops", absl::StrCat(s.drops)}});
  }
  f.insert(f.end(),
           {{"bytes_h2d", absl::StrCat(r.bytes_h2d)},
            {"bytes_d2h", absl::StrCat(r.bytes_d2h)},
            {"bytes_disk_written", absl::StrCat(r.bytes_disk_written)},
            {"bytes_disk_read", absl::StrCat(r.bytes_disk_read)},
            {"replicas", absl::StrCat(std::max<size_t>(1, r.replicas.size()))},
            {"remote_hit_blocks", absl::StrCat(r.remote_total.remote_hit_blocks)},
            {"cross_replica_hit_blocks", absl::StrCat(r.remote_total.cross_replica_hit_blocks)},
            {"cross_replica_hit_ratio", num(r.remote_total.cross_replica_hit_ratio())},
            {"remote_corrupt_reads", absl::StrCat(r.remote_total.remote.corrupt_reads)},
            {"mismatched_bytes", absl::StrCat(r.mismatched_bytes)},
            {"seconds", num(r.seconds)},
            {"accesses_per_second", absl::StrFormat("%.0f", r.accesses_per_second())},
            {"error", "\"\""}});
  return f;
}

void WriteCsv(const std::string& path, const Setup& setup, const std::vector<Run>& runs) {
  // The header is that of a successful run, so every row has the same columns.
  std::vector<std::string> columns;
  for (const Run& run : runs) {
    if (!run.result.ok()) continue;
    for (const auto& [k, v] : Fields(setup, run)) columns.push_back(k);
    break;
  }
  if (columns.empty()) {
    for (const auto& [k, v] : Fields(setup, runs.front())) columns.push_back(k);
  }
  FILE* f = OpenOut(path);
  std::fprintf(f, "trace,%s\n", absl::StrJoin(columns, ",").c_str());
  for (const Run& run : runs) {
    const auto fields = Fields(setup, run);
    std::vector<std::string> cells;
    for (const std::string& col : columns) {
      std::string cell;
      for (const auto& [k, v] : fields) {
        if (k == col) cell = v;
      }
      cells.push_back(cell);
    }
    std::fprintf(f, "%s,%s\n", JsonString(setup.trace->source).c_str(),
                 absl::StrJoin(cells, ",").c_str());
  }
  CloseOut(f);
}

void WriteJson(const std::string& path, const Setup& setup, const std::vector<Run>& runs) {
  const Trace& t = *setup.trace;
  FILE* f = OpenOut(path);
  std::fprintf(f,
               "{\n  \"trace\": {\"path\": %s, \"requests\": %zu, \"block_accesses\": %" PRIu64
               ", \"unique_blocks\": %u, \"infinite_cache_hit_ratio\": %.6f, "
               "\"prefix_violations\": %" PRIu64 "},\n  \"runs\": [\n",
               JsonString(t.source).c_str(), t.requests.size(), t.block_accesses(),
               t.unique_blocks(),
               t.block_accesses() == 0 ? 0.0 : 1.0 - double(t.unique_blocks()) / t.block_accesses(),
               t.prefix_violations);
  for (size_t i = 0; i < runs.size(); ++i) {
    std::vector<std::string> kv;
    for (const auto& [k, v] : Fields(setup, runs[i]))
      kv.push_back(absl::StrCat("\"", k, "\": ", v));
    std::fprintf(f, "    {%s}%s\n", absl::StrJoin(kv, ", ").c_str(),
                 i + 1 < runs.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  CloseOut(f);
}

// Hit ratio against capacity, one line per (policy, mode), with gnuplot. False (and a message) when
// gnuplot is missing or fails; the replay's results stand either way.
bool Plot(const std::string& png, const Setup& setup, const std::vector<Run>& runs) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::fprintf(stderr,
                 "kvtier-replay: --plot: gnuplot not found (apt-get install gnuplot-nox)\n");
    return false;
  }
  const std::string data = png + ".dat";
  FILE* d = std::fopen(data.c_str(), "w");
  if (d == nullptr) {
    std::fprintf(stderr, "kvtier-replay: --plot: cannot write %s\n", data.c_str());
    return false;
  }
  std::vector<std::string> titles;
  std::vector<std::pair<Mode, std::string>> series;
  for (const Run& run : runs) {
    std::pair<Mode, std::string> key{run.mode, run.policy};
    if (std::find(series.begin(), series.end(), key) == series.end()) series.push_back(key);
  }
  const bool both_modes = std::any_of(
      series.begin(), series.end(), [&](const auto& s) { return s.first != series.front().first; });
  for (const auto& [mode, policy] : series) {
    std::fprintf(d, "# %s %s\n", policy.c_str(), ModeName(mode));
    std::vector<std::pair<double, double>> points;
    for (const Run& run : runs) {
      if (run.mode == mode && run.policy == policy && run.result.ok()) {
        points.push_back({run.capacity.percent, run.result->hit_ratio()});
      }
    }
    std::sort(points.begin(), points.end());
    for (const auto& [x, y] : points) std::fprintf(d, "%.6f %.6f\n", x, y);
    std::fprintf(d, "\n\n");
    titles.push_back(both_modes ? absl::StrCat(policy, " (", ModeName(mode), ")") : policy);
  }
  std::fclose(d);
  const Trace& t = *setup.trace;
  const double infinite =
      t.block_accesses() == 0 ? 0.0 : 1.0 - double(t.unique_blocks()) / t.block_accesses();
  double min_x = 1e300, max_x = 0;
  for (const Run& run : runs) {
    min_x = std::min(min_x, run.capacity.percent);
    max_x = std::max(max_x, run.capacity.percent);
  }
  std::string title = absl::StrCat(std::filesystem::path(t.source).filename().string(),
                                   ": block hit ratio by capacity");
  if (!both_modes) {
    absl::StrAppend(&title, " (", ModeName(series.front().first), " mode)");
  }
  if (setup.host_blocks > 0 && std::any_of(series.begin(), series.end(),
                                           [](const auto& s) { return s.first == Mode::kCache; })) {
    absl::StrAppend(&title, ", cache mode with a host tier of ", setup.host_blocks, " blocks");
  }
  std::string script = absl::StrCat(
      "set terminal pngcairo size 960,600 font 'sans,10' noenhanced\n", "set output '", png, "'\n",
      "set title '", absl::StrReplaceAll(title, {{"'", ""}}), "'\n",
      "set logscale x\nset xlabel 'capacity (% of the trace''s unique blocks)'\n",
      absl::StrFormat("set xrange [%g:%g]\n", min_x / 1.25, max_x * 1.25),
      "set ylabel 'block hit ratio'\nset key outside right\nset grid\nset yrange [0:*]\n", "plot ");
  // One colour per policy; flat mode solid, cache mode dashed.
  std::vector<std::string> policy_order;
  for (const auto& [mode, policy] : series) {
    if (std::find(policy_order.begin(), policy_order.end(), policy) == policy_order.end()) {
      policy_order.push_back(policy);
    }
  }
  for (size_t i = 0; i < titles.size(); ++i) {
    const size_t colour = std::find(policy_order.begin(), policy_order.end(), series[i].second) -
                          policy_order.begin();
    static constexpr const char* kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                               "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                                               "#bcbd22", "#17becf", "#000000", "#aec7e8"};
    absl::StrAppend(&script, "'", data, "' index ", i, " using 1:2 with linespoints lc rgb '",
                    kColours[colour % 12], "' pt ", colour % 12 + 1, " dashtype ",
                    series[i].first == Mode::kFlat ? 1 : 2, " title '",
                    absl::StrReplaceAll(titles[i], {{"'", ""}}), "', ");
  }
  absl::StrAppend(&script, absl::StrFormat("%.6f", infinite),
                  " with lines dashtype 2 lw 1.5 lc rgb 'gray40' title 'infinite cache'\n");
  FILE* g = popen("gnuplot", "w");
  if (g == nullptr) return false;
  std::fputs(script.c_str(), g);
  const int rc = pclose(g);
  std::remove(data.c_str());
  if (rc != 0) {
    std::fprintf(stderr, "kvtier-replay: --plot: gnuplot failed (status %d)\n", rc);
    return false;
  }
  return true;
}

int Main(int argc, char** argv) {
  Args args = ParseArgs(argc, argv);
  for (const std::string& plugin : args.plugins) {
    if (dlopen(plugin.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      Usage(absl::StrCat("--plugin: ", dlerror()));
    }
  }
  if (args.list_options) {
    const Options defaults;
    for (const internal::OptionField& f : internal::OptionFields()) {
      std::string type = internal::OptionTypeName(f.type);
      if (!f.names.empty()) type = absl::StrJoin(f.names, "|");
      const std::string value = internal::FormatOptionValue(f.get(defaults));
      std::printf("%-26s %-14s %-16s %.*s\n", std::string(f.path).c_str(), type.c_str(),
                  value.empty() ? "''" : value.c_str(), static_cast<int>(f.help.size()),
                  f.help.data());
    }
    return 0;
  }
  const std::vector<std::string> registered = ListPolicies();
  if (args.list_policies) {
    for (const std::string& p : registered) std::printf("%s\n", p.c_str());
    return 0;
  }
  std::vector<std::string> policies = args.policies;
  if (args.all_policies) {
    for (const std::string& p : registered) {
      if (std::find(policies.begin(), policies.end(), p) == policies.end()) policies.push_back(p);
    }
  }
  if (policies.empty()) Usage("--policy: no policy named");
  for (const std::string& p : policies) {
    if (std::find(registered.begin(), registered.end(), p) == registered.end()) {
      Usage(absl::StrCat("--policy: no policy named '", p,
                         "' (registered: ", absl::StrJoin(registered, ", "), ")"));
    }
  }
  if (args.trace.empty()) Usage("--trace FILE is required");
  const std::optional<uint64_t> block_bytes = ParseBytes(args.block_bytes, true);
  if (!block_bytes || *block_bytes == 0 || *block_bytes % (2 * uint64_t{args.layers}) != 0) {
    Usage(absl::StrCat("--block-bytes: '", args.block_bytes,
                       "' is not a positive byte size divisible by 2*layers=", 2 * args.layers));
  }
  const bool has_cache =
      std::find(args.modes.begin(), args.modes.end(), Mode::kCache) != args.modes.end();
  if (!has_cache && (!args.host_capacity.empty() || !args.disk_capacity.empty() || args.full ||
                     !args.options.empty())) {
    Usage("--host-capacity, --disk-capacity, --full and --option apply to --mode cache only");
  }
  if (args.replicas > 1 && args.remote.empty()) {
    Usage("--replicas > 1 needs --remote HOST:PORT,... (the tier the replicas share)");
  }
  if (!args.remote.empty()) {
    if (!has_cache || args.modes.size() > 1)
      Usage("--remote and --replicas apply to --mode cache only");
    if (args.host_capacity.empty()) {
      Usage("--remote needs --host-capacity (remote blocks move through host slots)");
    }
    if (!args.full) {
      std::fprintf(stderr,
                   "kvtier-replay: --remote: the remote tier stores the blocks' bytes: full mode "
                   "(--full) switched on\n");
      args.full = true;
    }
    if (args.remote_scope.empty()) args.remote_scope = absl::StrCat("kvtier-replay-", getpid());
  }
  if (!args.disk_capacity.empty() && args.host_capacity.empty()) {
    Usage("--disk-capacity needs --host-capacity (disk blocks move through host slots)");
  }
  if (args.full && !args.disk_capacity.empty() && args.disk_dir.empty()) {
    Usage("--full with --disk-capacity needs --disk-dir DIR");
  }

  const Clock::time_point load_start = Clock::now();
  absl::StatusOr<Trace> trace = ReadTrace(args.trace, args.max_requests);
  if (!trace.ok()) Usage(trace.status().message());
  const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
  if (trace->requests.empty()) Usage(absl::StrCat(args.trace, ": no request"));

  const uint32_t unique = trace->unique_blocks();
  std::vector<Capacity> capacities;
  for (const std::string& c : args.capacities) {
    capacities.push_back(ParseCapacity("--capacity", c, unique, *block_bytes));
  }
  Setup setup{.trace = &*trace, .block_bytes = *block_bytes, .full = args.full};
  if (!args.host_capacity.empty()) {
    setup.host_blocks =
        ParseCapacity("--host-capacity", args.host_capacity, unique, *block_bytes).blocks;
  }
  if (!args.disk_capacity.empty()) {
    setup.disk_blocks =
        ParseCapacity("--disk-capacity", args.disk_capacity, unique, *block_bytes).blocks;
  }

  std::printf("kvtier-replay: %s: %zu requests, %" PRIu64
              " block accesses, %u unique blocks "
              "(infinite-cache hit ratio %.4f), parsed in %.2f s\n",
              trace->source.c_str(), trace->requests.size(), trace->block_accesses(), unique,
              1.0 - double(unique) / std::max<uint64_t>(1, trace->block_accesses()), load_seconds);
  if (trace->prefix_violations > 0) {
    std::printf("warning: %" PRIu64
                " block appearances follow a different parent than where the id first appeared; "
                "cache mode keys them by their chain, flat mode by id\n",
                trace->prefix_violations);
  }
  if (has_cache) {
    std::printf(
        "cache mode: %s, %s per block of %u tokens (%u layers)%s%s\n",
        args.full ? "full (bytes moved on the emulated device)" : "metadata only",
        Bytes(*block_bytes).c_str(), args.tokens_per_block, args.layers,
        setup.host_blocks > 0 ? absl::StrCat(", host tier ", setup.host_blocks, " blocks").c_str()
                              : "",
        setup.disk_blocks > 0 ? absl::StrCat(", disk tier ", setup.disk_blocks, " blocks").c_str()
                              : "");
    if (args.codec != "none") {
      std::printf(
          "codec: host.codec=%s (group %u): host and disk keep the bytes of the raw blocks "
          "above and hold more encoded ones; host>disk and disk>host count encoded bytes\n",
          args.codec.c_str(), args.codec_group_size);
    }
  }
  std::fflush(stdout);

  std::vector<BlockKey> keys;
  if (has_cache) keys = ChainKeys(*trace);
  const bool progress = args.progress == 1 || (args.progress == -1 && isatty(STDERR_FILENO));
  const bool tty = isatty(STDERR_FILENO);
  const size_t total_runs = args.modes.size() * policies.size() * capacities.size();
  std::vector<Run> runs;
  for (const Mode mode : args.modes) {
    for (const std::string& policy : policies) {
      for (const Capacity& cap : capacities) {
        const std::string label =
            absl::StrFormat("[%zu/%zu] %s %s %s (%u blocks)", runs.size() + 1, total_runs,
                            ModeName(mode), policy, cap.text, cap.blocks);
        const Clock::time_point run_start = Clock::now();
        ReplayConfig config{
            .mode = mode,
            .policy = policy,
            .policy_params = args.params,
            .device_blocks = cap.blocks,
            .host_blocks = mode == Mode::kCache ? setup.host_blocks : 0,
            .disk_blocks = mode == Mode::kCache ? setup.disk_blocks : 0,
            .payload = mode == Mode::kCache && args.full,
            .disk_directory = args.disk_dir,
            .demote_on_evict = args.demote,
            .host_write_through = args.write_through,
            .shape = {.tokens_per_block = args.tokens_per_block,
                      .layers = args.layers,
                      .block_bytes = *block_bytes},
            .time_limit_seconds = args.time_limit_seconds,
            .replicas = args.replicas,
            .codec = args.codec,
            .codec_group_size = args.codec_group_size,
            .options = args.options,
        };
        if (!args.remote.empty()) {
          config.remote = {.nodes = args.remote,
                           .scope = absl::StrCat(args.remote_scope, "-", runs.size()),
                           .publish = args.remote_publish};
        }
        if (progress) {
          config.progress = [&](uint64_t done) {
            const TraceRequest& last = trace->requests[done - 1];
            const double accesses = last.first_block + last.num_blocks;
            const double secs = std::chrono::duration<double>(Clock::now() - run_start).count();
            std::fprintf(stderr, "%s%s: %5.1f%% of requests, %.2f M block accesses/s%s",
                         tty ? "\r" : "", label.c_str(), 100.0 * done / trace->requests.size(),
                         accesses / secs / 1e6, tty ? "\033[K" : "\n");
          };
        }
        absl::StatusOr<ReplayResult> result = Replay(*trace, config, keys);
        std::vector<double> seconds;
        for (uint32_t k = 1; k < args.repeat && result.ok(); ++k) {
          seconds.push_back(result->seconds);
          // Each repeat cold: a scope of its own, or the store serves the last one's blocks.
          if (!args.remote.empty()) config.remote.scope += absl::StrCat(".", k);
          result = Replay(*trace, config, keys);
        }
        if (result.ok() && !seconds.empty()) {
          seconds.push_back(result->seconds);
          std::sort(seconds.begin(), seconds.end());
          result->seconds = seconds[seconds.size() / 2];
        }
        runs.push_back({mode, policy, cap, std::move(result)});
        if (progress && tty) std::fprintf(stderr, "\r\033[K");
      }
    }
  }
  PrintTable(setup, runs);
  PrintReplicas(runs);
  if (!args.csv.empty()) WriteCsv(args.csv, setup, runs);
  if (!args.json.empty()) WriteJson(args.json, setup, runs);
  if (!args.plot.empty() && Plot(args.plot, setup, runs)) {
    std::printf("plot: %s\n", args.plot.c_str());
  }
  for (const Run& run : runs) {
    if (!run.result.ok()) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kvtier::replay

int main(int argc, char** argv) { return kvtier::replay::Main(argc, argv); }
