// A hand-written parser for the fixed JSON-lines trace format: no JSON library, one pass, errors
// that name the line. Unknown keys are skipped (any JSON value), so traces with extra fields load.
#include "bench/trace.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier::replay {
namespace {

// Parses one line (one request); fails with a message that the caller prefixes with the line.
class LineParser {
 public:
  explicit LineParser(absl::string_view line) : s_(line) {}

  // What the fields of a request hold after Parse().
  struct Fields {
    bool has_timestamp = false, has_input = false, has_output = false, has_ids = false;
    uint64_t timestamp = 0, input = 0, output = 0;
    std::vector<uint64_t> ids;
  };

  absl::Status Parse(Fields* f) {
    SkipSpace();
    if (!Eat('{')) return Expected("'{' at the start of the request");
    SkipSpace();
    if (Eat('}')) return Trailing();
    for (;;) {
      SkipSpace();
      std::string key;
      if (absl::Status st = String(&key); !st.ok()) return st;
      SkipSpace();
      if (!Eat(':')) return Expected(absl::StrCat("':' after \"", key, "\""));
      SkipSpace();
      absl::Status st;
      if (key == "timestamp") {
        st = Once(key, &f->has_timestamp);
        if (st.ok()) st = Number(key, /*integer=*/false, &f->timestamp);
      } else if (key == "input_length") {
        st = Once(key, &f->has_input);
        if (st.ok()) st = Number(key, /*integer=*/true, &f->input);
      } else if (key == "output_length") {
        st = Once(key, &f->has_output);
        if (st.ok()) st = Number(key, /*integer=*/true, &f->output);
      } else if (key == "hash_ids") {
        st = Once(key, &f->has_ids);
        if (st.ok()) st = Ids(&f->ids);
      } else {
        st = SkipValue(0);
      }
      if (!st.ok()) return st;
      SkipSpace();
      if (Eat(',')) continue;
      if (Eat('}')) return Trailing();
      return Expected("',' or '}' after a value");
    }
  }

 private:
  bool AtEnd() const { return pos_ >= s_.size(); }
  char Peek() const { return AtEnd() ? '\0' : s_[pos_]; }
  bool Eat(char c) {
    if (Peek() != c || AtEnd()) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (!AtEnd() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\r')) ++pos_;
  }
  std::string Got() const {
    if (AtEnd()) return "end of line";
    absl::string_view rest = s_.substr(pos_, 16);
    return absl::StrCat("'", rest, pos_ + 16 < s_.size() ? "...'" : "'");
  }
  absl::Status Expected(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("expected ", what, " (got ", Got(), " at column ", pos_ + 1, ")"));
  }
  absl::Status Trailing() {
    SkipSpace();
    if (AtEnd()) return absl::OkStatus();
    return Expected("nothing after the request's closing '}'");
  }
  static absl::Status Once(const std::string& key, bool* seen) {
    if (*seen) return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" appears twice"));
    *seen = true;
    return absl::OkStatus();
  }

  absl::Status String(std::string* out) {
    if (!Eat('"')) return Expected("a quoted key");
    while (!AtEnd() && s_[pos_] != '"') {
      if (s_[pos_] == '\\') ++pos_;  // keys we care about have no escapes: keep the raw character
      if (!AtEnd()) out->push_back(s_[pos_++]);
    }
    if (!Eat('"')) return Expected("a closing '\"'");
    return absl::OkStatus();
  }

  // A non-negative integer (or, with !integer, a non-negative decimal, truncated).
  // `index` >= 0 names an element of `what` in errors (the message is built only on failure).
  absl::Status Number(absl::string_view what_key, bool integer, uint64_t* out, int64_t index = -1) {
    auto what = [&] {
      return index < 0 ? std::string(what_key) : absl::StrCat(what_key, "[", index, "]");
    };
    const size_t start = pos_;
    uint64_t v = 0;
    bool digits = false;
    while (!AtEnd() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const uint64_t d = static_cast<uint64_t>(s_[pos_] - '0');
      if (v > (UINT64_MAX - d) / 10) {
        pos_ = start;
        return Expected(absl::StrCat("a ", what(), " below 2^64"));
      }
      v = v * 10 + d;
      digits = true;
      ++pos_;
    }
    if (!digits) return Expected(absl::StrCat("a non-negative integer for ", what()));
    if (Peek() == '.' || Peek() == 'e' || Peek() == 'E') {
      if (integer) return Expected(absl::StrCat("an integer for ", what()));
      const std::string text(s_.substr(start, 64));
      char* end = nullptr;
      const double d = std::strtod(text.c_str(), &end);
      if (end == text.c_str() || !(d >= 0) || d >= 1.8e19) {
        pos_ = start;
        return Expected(absl::StrCat("a non-negative number for ", what()));
      }
      pos_ = start + static_cast<size_t>(end - text.c_str());
      v = static_cast<uint64_t>(d);
    }
    *out = v;
    return absl::OkStatus();
  }

  absl::Status Ids(std::vector<uint64_t>* ids) {
    if (!Eat('[')) return Expected("'[' to open hash_ids");
    SkipSpace();
    if (Eat(']')) return absl::OkStatus();
    for (;;) {
      SkipSpace();
      uint64_t id = 0;
      if (absl::Status st = Number("hash_ids", true, &id, static_cast<int64_t>(ids->size()));
          !st.ok()) {
        return st;
      }
      ids->push_back(id);
      SkipSpace();
      if (Eat(',')) continue;
      if (Eat(']')) return absl::OkStatus();
      return Expected("',' or ']' in hash_ids");
    }
  }

  // Any JSON value, not interpreted (for keys the replay does not use).
  absl::Status SkipValue(int depth) {
    if (depth > 64) return Expected("a value nested less than 64 deep");
    const char c = Peek();
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++pos_;
      SkipSpace();
      if (Eat(close)) return absl::OkStatus();
      for (;;) {
        SkipSpace();
        if (c == '{') {
          std::string ignored;
          if (absl::Status st = String(&ignored); !st.ok()) return st;
          SkipSpace();
          if (!Eat(':')) return Expected("':' in an object");
          SkipSpace();
        }
        if (absl::Status st = SkipValue(depth + 1); !st.ok()) return st;
        SkipSpace();
        if (Eat(',')) continue;
        if (Eat(close)) return absl::OkStatus();
        return Expected(absl::StrCat("',' or '", std::string(1, close), "'"));
      }
    }
    // A number or a literal: up to the next delimiter.
    const size_t start = pos_;
    while (!AtEnd() && s_[pos_] != ',' && s_[pos_] != '}' && s_[pos_] != ']' && s_[pos_] != ' ') {
      ++pos_;
    }
    if (pos_ == start) return Expected("a value");
    return absl::OkStatus();
  }

  absl::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Trace> ParseTrace(absl::string_view text, absl::string_view source,
                                 uint64_t max_requests) {
  Trace trace;
  trace.source = std::string(source);
  // Original hash id -> 1 + dense id. Ids are usually small dense integers: a table indexed by the
  // id, grown as needed up to a few bytes per byte of text; larger ids go to a hash map.
  std::vector<uint32_t> direct;
  const uint64_t direct_limit = std::max<uint64_t>(text.size() / 4, 1 << 16);
  absl::flat_hash_map<uint64_t, uint32_t> hashed;
  std::vector<uint32_t> last_request;  // dense id -> 1 + the last request using it
  const size_t expected_ids = std::min<size_t>(text.size() / 6, size_t{1} << 24);
  trace.blocks.reserve(expected_ids);
  LineParser::Fields f;
  uint32_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size() && (max_requests == 0 || trace.requests.size() < max_requests)) {
    size_t end = text.find('\n', pos);
    if (end == absl::string_view::npos) end = text.size();
    const absl::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;  // blank
    auto fail = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("ParseTrace: ", source, ":", line_no, ": ", what));
    };
    f.ids.clear();  // keeps its capacity
    f = LineParser::Fields{.ids = std::move(f.ids)};
    if (absl::Status st = LineParser(line).Parse(&f); !st.ok()) return fail(st.message());
    if (!f.has_ids) return fail("missing \"hash_ids\"");
    if (!f.has_input) return fail("missing \"input_length\"");
    if (trace.blocks.size() + f.ids.size() >= UINT32_MAX ||
        trace.requests.size() >= UINT32_MAX - 1) {
      return fail("more than 2^32 blocks or requests");
    }
    TraceRequest r{.timestamp_ms = f.timestamp,
                   .input_tokens = f.input,
                   .output_tokens = f.output,
                   .first_block = static_cast<uint32_t>(trace.blocks.size()),
                   .num_blocks = static_cast<uint32_t>(f.ids.size()),
                   .line = line_no};
    const auto request_mark = static_cast<uint32_t>(trace.requests.size() + 1);
    uint32_t parent = Trace::kNoParent;
    for (size_t i = 0; i < f.ids.size(); ++i) {
      const uint64_t hash_id = f.ids[i];
      uint32_t* slot;
      if (hash_id < direct_limit) {
        if (hash_id >= direct.size())
          direct.resize(std::max<uint64_t>(hash_id + 1, direct.size() * 2));
        slot = &direct[hash_id];
      } else {
        slot = &hashed[hash_id];
      }
      const bool inserted = *slot == 0;
      if (inserted) *slot = trace.unique_blocks() + 1;
      const uint32_t id = *slot - 1;
      if (inserted) {
        trace.parent.push_back(parent);
        last_request.push_back(0);
        trace.max_hash_id = std::max(trace.max_hash_id, f.ids[i]);
      } else if (trace.parent[id] != parent) {
        trace.prefix_violations++;
      }
      if (last_request[id] == request_mark) {
        return fail(absl::StrCat("hash_ids[", i, "]: id ", f.ids[i],
                                 " repeats inside the request (ids name prefixes)"));
      }
      last_request[id] = request_mark;
      trace.blocks.push_back(id);
      parent = id;
    }
    trace.requests.push_back(r);
  }
  return trace;
}

absl::StatusOr<Trace> ReadTrace(const std::string& path, uint64_t max_requests) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("ReadTrace: ", path));
  // Read in chunks of at most kChunk, into a buffer sized by the file when it is a regular one
  // (at most kPresize up front), else grown as needed (a pipe). A NUL byte is refused as soon as
  // it is read: a sparse file, /dev/zero or a binary is no JSON-lines trace, and must not be read
  // whole. Allocation does not throw: a file larger than memory is an error, not an abort.
  constexpr size_t kChunk = size_t{1} << 20;
  constexpr size_t kPresize = size_t{1} << 30;
  struct stat st;
  size_t capacity = 1 << 16;
  if (fstat(fileno(file.get()), &st) == 0 && S_ISREG(st.st_mode)) {
    capacity = std::min(static_cast<size_t>(st.st_size) + 1, kPresize);
  }
  const auto too_large = [&](size_t bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("ReadTrace: ", path, ": ", bytes, " bytes do not fit in memory"));
  };
  std::unique_ptr<char[]> text(new (std::nothrow) char[capacity]);  // not zero-filled: read over
  if (text == nullptr) return too_large(capacity);
  size_t size = 0;
  for (;;) {
    if (size == capacity) {
      std::unique_ptr<char[]> bigger(new (std::nothrow) char[capacity * 2]);
      if (bigger == nullptr) return too_large(capacity * 2);
      std::memcpy(bigger.get(), text.get(), size);
      text = std::move(bigger);
      capacity *= 2;
    }
    const size_t n =
        std::fread(text.get() + size, 1, std::min(kChunk, capacity - size), file.get());
    if (const void* nul = std::memchr(text.get() + size, '\0', n); nul != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ReadTrace: ", path, ": a NUL byte at offset ",
          size + static_cast<size_t>(static_cast<const char*>(nul) - (text.get() + size)),
          ": not a JSON-lines trace"));
    }
    size += n;
    if (n == 0) break;
  }
  if (std::ferror(file.get())) {
    return absl::ErrnoToStatus(errno, absl::StrCat("ReadTrace: reading ", path));
  }
  return ParseTrace(absl::string_view(text.get(), size), path, max_requests);
}

}  // namespace kvtier::replay
