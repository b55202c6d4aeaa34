// Fuzz target: the Mooncake JSON-lines trace parser (ParseTrace, bench/trace.h) behind
// kvtier-replay, which reads whatever file it is given.
//
// Input: the trace's text. A trace that parses is consistent: its requests' blocks tile
// Trace::blocks in order, every block id is a dense id with a parent that is one too (or none),
// no request repeats an id, and parsing with max_requests keeps exactly that prefix.
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "bench/trace.h"
#include "test/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvtier::replay::Trace;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<Trace> trace = kvtier::replay::ParseTrace(text, "fuzz");
  if (!trace.ok()) {
    KVTIER_FUZZ_CHECK(trace.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  uint64_t next_block = 0;
  uint32_t last_line = 0;
  for (const kvtier::replay::TraceRequest& r : trace->requests) {
    KVTIER_FUZZ_CHECK(r.first_block == next_block);
    KVTIER_FUZZ_CHECK(r.line > last_line);
    last_line = r.line;
    next_block += r.num_blocks;
    KVTIER_FUZZ_CHECK(next_block <= trace->blocks.size());
    absl::flat_hash_set<uint32_t> seen;
    for (uint32_t id : trace->BlocksOf(r)) {
      KVTIER_FUZZ_CHECK(id < trace->unique_blocks());
      KVTIER_FUZZ_CHECK(seen.insert(id).second);
    }
  }
  KVTIER_FUZZ_CHECK(next_block == trace->blocks.size());
  for (uint32_t p : trace->parent) {
    KVTIER_FUZZ_CHECK(p == Trace::kNoParent || p < trace->unique_blocks());
  }
  if (trace->requests.size() > 1) {
    const uint64_t keep = trace->requests.size() / 2;
    absl::StatusOr<Trace> prefix = kvtier::replay::ParseTrace(text, "fuzz", keep);
    KVTIER_FUZZ_CHECK(prefix.ok() && prefix->requests.size() == keep);
    KVTIER_FUZZ_CHECK(prefix->blocks.size() == trace->requests[keep].first_block);
  }
  return 0;
}
