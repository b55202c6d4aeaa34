// Trace: a request trace in the Mooncake format (FAST'25 release), parsed for kvtier-replay.
//
// One JSON object per line:
//   {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, 13]}
// hash_ids name the prompt's blocks (512 tokens each in the Mooncake traces) in order; equal id <=>
// same block content and same prefix, so the ids of one request form a prefix chain. Blank lines
// are skipped; other keys are ignored. hash_ids and input_length are required, timestamp and
// output_length default to 0.
//
// Thread safety: a Trace is a value, immutable once parsed.
// Errors: kInvalidArgument naming the source and line ("trace.jsonl:17: hash_ids: expected a
//   non-negative integer (got 'x')") for malformed input or an id repeated inside one request;
//   kNotFound / kPermissionDenied etc. (from errno) when the file cannot be read.
#ifndef KVTIER_BENCH_TRACE_H_
#define KVTIER_BENCH_TRACE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::replay {

struct TraceRequest {
  uint64_t timestamp_ms = 0;   // arrival, relative to the start of the trace
  uint64_t input_tokens = 0;   // prompt length
  uint64_t output_tokens = 0;  // generated tokens (not replayed: not in the trace's hash_ids)
  uint32_t first_block = 0;    // index of the request's first block in Trace::blocks
  uint32_t num_blocks = 0;     // len(hash_ids)
  uint32_t line = 0;           // 1-based line number in the source
};

struct Trace {
  std::string source;                  // file name (or the name given to ParseTrace)
  std::vector<TraceRequest> requests;  // in file order
  // Every block access, request after request: the trace's hash ids remapped to dense ids
  // [0, unique_blocks) in order of first appearance (so per-block state can live in vectors).
  std::vector<uint32_t> blocks;
  // parent[id]: the dense id that precedes `id` where it first appears (kNoParent for a first
  // block). Ids name prefixes, so it is the same at every appearance unless the trace breaks the
  // format's promise; prefix_violations counts the appearances where it is not.
  std::vector<uint32_t> parent;
  uint64_t prefix_violations = 0;
  uint64_t max_hash_id = 0;  // largest original id, for reports

  static constexpr uint32_t kNoParent = UINT32_MAX;
  uint32_t unique_blocks() const { return static_cast<uint32_t>(parent.size()); }
  uint64_t block_accesses() const { return blocks.size(); }
  std::span<const uint32_t> BlocksOf(const TraceRequest& r) const {
    return std::span<const uint32_t>(blocks).subspan(r.first_block, r.num_blocks);
  }
};

// Parses JSON-lines `text`; `source` names it in error messages. max_requests > 0 keeps only the
// first max_requests requests (the rest of the text is not parsed). O(text).
absl::StatusOr<Trace> ParseTrace(absl::string_view text, absl::string_view source,
                                 uint64_t max_requests = 0);

// Reads and parses the file at `path` (see ParseTrace).
absl::StatusOr<Trace> ReadTrace(const std::string& path, uint64_t max_requests = 0);

}  // namespace kvtier::replay

#endif  // KVTIER_BENCH_TRACE_H_
