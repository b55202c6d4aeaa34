// Fuzz target: the Redis client's reply reader (ReplyParser, lib/tiers/resp_reader.h) and what
// the client reads out of replies (redirections, the CLUSTER SLOTS map): every byte a cluster
// node, or anything answering on its port, sends.
//
// Input: a mode byte, the target's head and body sizes (a byte each), then the bytes the
// connection receives, read as the replies of a pipeline until they run out or one is refused.
//   mode bit 0: each reply is read with a ReadTarget of those sizes (GetInto), else without.
//   mode bits 1-2: the bytes arrive 1, 2, 7 or 61 at a time.
//   mode bit 3: max_reply_bytes is its minimum (kMaxLineBytes), else 1 MiB.
// A reply read into a target fits it; a refused reply is kUnavailable; a CLUSTER SLOTS map that
// parses names a master for every slot. And the chunks do not matter: the same bytes fed all at
// once give the same replies (inputs are far below the byte limits, so only a reply still
// incomplete at the end may be refused early in chunks: an announced length too long).
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "lib/tiers/resp_reader.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier::internal {
namespace {

// A reply as text, for comparing runs: its type and contents, recursively.
std::string Describe(const redisReply* r) {
  if (IsSunkReply(r)) return "sunk";
  std::string out = std::to_string(r->type) + ":";
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return out + std::to_string(r->integer);
    case REDIS_REPLY_ARRAY:
      out += std::to_string(r->elements) + "[";
      for (size_t i = 0; i < r->elements; ++i) out += Describe(r->element[i]) + ",";
      return out + "]";
    case REDIS_REPLY_NIL:
      return out;
    default:
      return out + std::string(r->str, r->len);
  }
}

void Interpret(const redisReply* r) {
  if (r->type == REDIS_REPLY_ERROR) {
    const absl::string_view err(r->str, r->len);
    int slot = 0;
    std::string addr;
    if (ParseRedirect(err, "MOVED", &slot, &addr) || ParseRedirect(err, "ASK", &slot, &addr)) {
      KVTIER_FUZZ_CHECK(slot >= 0 && slot < kNumSlots && !addr.empty());
    }
    IsTransientServerError(err);
  }
  if (r->type == REDIS_REPLY_ARRAY || r->type == REDIS_REPLY_ERROR) {
    absl::StatusOr<std::vector<std::string>> owners =
        ParseClusterSlots(r, "127.0.0.1:7000", "127.0.0.1");
    if (owners.ok()) {
      KVTIER_FUZZ_CHECK(owners->size() == kNumSlots);
      for (const std::string& o : *owners) KVTIER_FUZZ_CHECK(!o.empty());
    }
  }
}

struct Transcript {
  std::vector<std::string> replies;  // Describe() of each, with the target's bytes if sunk
  bool refused = false;              // else the bytes ran out
};

// Reads `in` as a pipeline's replies, `chunk` bytes at a time.
Transcript Read(absl::string_view in, size_t chunk, const RedisCluster::ReadTarget* target,
                uint64_t max_reply_bytes) {
  Transcript t;
  redisReader* reader = redisReaderCreate();
  KVTIER_FUZZ_CHECK(reader != nullptr);
  SetUpRespReader(reader);
  for (bool more = true; more;) {
    ReplyParser parser(reader, "fuzz", max_reply_bytes, target);
    for (;;) {
      absl::StatusOr<ReplyPtr> reply = parser.Poll();
      if (!reply.ok()) {
        KVTIER_FUZZ_CHECK(reply.status().code() == absl::StatusCode::kUnavailable);
        t.refused = true;  // the connection is out of step: closed
        more = false;
        break;
      }
      if (*reply != nullptr) {
        std::string text = Describe(reply->get());
        if (IsSunkReply(reply->get())) {
          KVTIER_FUZZ_CHECK(target != nullptr && parser.value_bytes().has_value());
          const size_t n = *parser.value_bytes();
          KVTIER_FUZZ_CHECK(n <= target->head_len + target->body_len);
          const size_t head = std::min(n, target->head_len);
          text += std::string(target->head, head) + std::string(target->body, n - head);
        } else {
          KVTIER_FUZZ_CHECK(!parser.value_bytes().has_value());
          Interpret(reply->get());
        }
        t.replies.push_back(std::move(text));
        break;
      }
      if (in.empty()) {
        more = false;  // the peer sent no more
        break;
      }
      const size_t n = std::min(chunk, in.size());
      if (!parser.Feed(in.data(), n).ok()) {
        t.refused = true;
        more = false;
        break;
      }
      in.remove_prefix(n);
    }
  }
  redisReaderFree(reader);
  return t;
}

void Run(const uint8_t* data, size_t size) {
  if (size < 3 || size > 16 * 1024) return;  // far below every byte limit (see above)
  const uint8_t mode = data[0];
  // Exactly the sizes asked: a write past either is ASan's finding.
  std::vector<char> head(data[1]), body(data[2]);
  const RedisCluster::ReadTarget target{
      .head = head.data(), .head_len = head.size(), .body = body.data(), .body_len = body.size()};
  const RedisCluster::ReadTarget* t = (mode & 1) ? &target : nullptr;
  constexpr size_t kChunks[] = {1, 2, 7, 61};
  const uint64_t max_reply_bytes = (mode & 8) ? kMaxLineBytes : 1 << 20;
  const absl::string_view in(reinterpret_cast<const char*>(data + 3), size - 3);
  const Transcript chunked = Read(in, kChunks[(mode >> 1) & 3], t, max_reply_bytes);
  const Transcript whole = Read(in, in.size(), t, max_reply_bytes);
  KVTIER_FUZZ_CHECK(chunked.replies == whole.replies);
  KVTIER_FUZZ_CHECK(chunked.refused || !whole.refused);
}

}  // namespace
}  // namespace kvtier::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::internal::Run(data, size);
  return 0;
}
