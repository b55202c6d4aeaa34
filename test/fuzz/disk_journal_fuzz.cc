// Fuzz target: the disk tier's crash journal (DiskJournal::Load, lib/tiers/disk_journal.h) on a
// directory whose checkpoint and journal files come from the input: what a crash, a power loss,
// another program or a hostile user may leave there. Each run empties one scratch directory
// (under $TMPDIR, else /dev/shm, else /tmp; removed at exit) and writes:
//   checkpoint  none (mode bit 0), the input's raw bytes (bit 1), or a well-formed checkpoint of
//               another fingerprint (bit 2) or of ours: epoch, generation, max sequence and entries
//               (slot, key) from the input, slots up to 1.5x the tier and keys from a small
//               alphabet, so that some checkpoints hold a slot past the tier, a slot or a key twice
//   journal.<G % 2>, journal.<(G + 1) % 2>
//               each: the input's raw bytes (bit 3), or records built from the input, each of one
//               kind: a put or a drop of its slot (slots up to 1.5x the tier), a record of another
//               epoch, one at the wrong index, or 64 bytes of the input; then (bit 4) a torn tail
// and loads the journal of a 16-slot tier there. Properties: Load never fails or crashes; what it
// returns has every slot inside the tier and each slot and each key at most once; and where the
// files were built from the input, it is exactly the state of a model: the checkpoint (if it is
// valid), then journal G's records in order up to the first invalid one, then journal G + 1's
// only if every byte of G was a valid record.
// Input: mode u8, then the values each file takes, one byte at a time (0 once the input ends).
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "lib/tiers/disk_journal.h"
#include "test/fuzz/disk_fuzz_util.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier::internal {
namespace {

namespace fs = std::filesystem;
constexpr uint32_t kSlots = 16;
constexpr uint64_t kFingerprint = 0x6b76746965720003;
constexpr DiskGeometry kGeometry{
    .layout_fingerprint = kFingerprint, .slot_bytes = 8192, .slots = kSlots, .files = 1};

struct Scratch {
  Scratch() : dir(MakeFuzzScratchDir("kvtier-disk-journal-fuzz")) {}
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  void Write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    std::ofstream f(fs::path(dir) / name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  }
  std::string dir;
};

// The input, a byte at a time; 0 once it ends.
struct Input {
  const uint8_t* p;
  size_t left;
  uint8_t U8() {
    if (left == 0) return 0;
    left--;
    return *p++;
  }
  std::vector<uint8_t> Bytes(size_t n) {
    std::vector<uint8_t> out(p, p + std::min(n, left));
    p += out.size();
    left -= out.size();
    return out;
  }
};

BlockKey KeyOf(uint8_t k) { return {0x6b6579, k % 8u + 1u}; }
BlockKey ParentOf(uint8_t k) { return {0x706172, k}; }

// The state a replay should reach: the journal's rules, applied to what the files were built of.
struct Model {
  std::map<SlotId, StoredBlock> by_slot;
  void Put(const StoredBlock& b) {
    for (auto it = by_slot.begin(); it != by_slot.end(); ++it) {
      if (it->second.key == b.key) {
        by_slot.erase(it);
        break;
      }
    }
    by_slot[b.slot] = b;
  }
};

// A journal file of records built from the input; appends to `model` what a replay must apply.
// Returns whether every byte of the file is a valid record (so that the next generation replays).
bool BuildJournal(Input& in, uint8_t mode, uint64_t epoch, uint64_t generation,
                  std::vector<uint8_t>* file, std::vector<StoredBlock>* puts_and_drops,
                  bool* replayed, uint64_t* sequences) {
  const uint64_t seed = JournalSeed(epoch, generation, kFingerprint);
  const uint32_t n = in.U8() % 24;
  bool valid = true;  // every record so far is the replay's next one
  uint64_t index = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t kind = in.U8() % 8;
    JournalRecord r;
    r.slot = in.U8() % (kSlots + kSlots / 2);
    const uint8_t k = in.U8();
    r.key = KeyOf(k);
    r.parent = ParentOf(k);
    r.sequence = in.U8();
    r.op = kind == 1 ? JournalOp::kDrop : JournalOp::kPut;
    if (r.op == JournalOp::kDrop) r.key = r.parent = BlockKey{};
    uint8_t bytes[kJournalRecordBytes];
    bool good = r.slot < kSlots;
    if (kind == 2) {  // another epoch's record
      EncodeJournalRecord(r, JournalSeed(epoch + 1, generation, kFingerprint), index, bytes);
      good = false;
    } else if (kind == 3) {  // at the wrong index
      EncodeJournalRecord(r, seed, index + 1, bytes);
      good = false;
    } else if (kind == 4) {  // the input's bytes
      const std::vector<uint8_t> raw = in.Bytes(kJournalRecordBytes);
      std::fill(std::begin(bytes), std::end(bytes), 0);
      std::copy(raw.begin(), raw.end(), bytes);
      good = false;  // valid by chance: one in 2^64
    } else {
      EncodeJournalRecord(r, seed, index, bytes);
    }
    file->insert(file->end(), bytes, bytes + kJournalRecordBytes);
    if (valid && good) {
      index++;
      puts_and_drops->push_back({.slot = r.slot,
                                 .key = r.key,
                                 .parent = r.op == JournalOp::kDrop ? BlockKey{} : r.parent});
      replayed[puts_and_drops->size() - 1] = r.op == JournalOp::kPut;
      sequences[puts_and_drops->size() - 1] = r.sequence;
    }
    valid = valid && good;
  }
  if ((mode & 16) != 0 && !file->empty()) {  // a torn tail: a record cut short
    file->resize(file->size() - 1 - in.U8() % (kJournalRecordBytes - 1));
    if (file->size() < index * kJournalRecordBytes) {  // it cut a valid record too
      const uint64_t kept = file->size() / kJournalRecordBytes;
      puts_and_drops->resize(puts_and_drops->size() - (index - kept));
    }
    valid = false;
  }
  return valid;
}

void Run(const uint8_t* data, size_t size) {
  static const Scratch s;  // removed at exit
  if (size < 1) return;
  Input in{data + 1, size - 1};
  const uint8_t mode = data[0];
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(s.dir, ec)) fs::remove_all(entry.path(), ec);

  // The checkpoint, and whether the model says it is valid.
  const uint64_t epoch = 1 + in.U8() % 2, generation = in.U8() % 4;
  Model model;
  bool checkpoint_valid = false;
  uint64_t max_sequence = 0;
  if ((mode & 1) != 0) {
    // none
  } else if ((mode & 2) != 0) {
    s.Write("checkpoint", in.Bytes(in.U8() * 8u));
  } else {
    std::vector<StoredBlock> entries;
    const uint32_t n = in.U8() % 20;
    absl::flat_hash_set<SlotId> slots;
    absl::flat_hash_set<BlockKey> keys;
    checkpoint_valid = (mode & 4) == 0;
    for (uint32_t i = 0; i < n; ++i) {
      const uint8_t k = in.U8();
      StoredBlock b{
          .slot = in.U8() % (kSlots + kSlots / 2), .key = KeyOf(k), .parent = ParentOf(k)};
      checkpoint_valid = checkpoint_valid && b.slot < kSlots && slots.insert(b.slot).second &&
                         keys.insert(b.key).second;
      entries.push_back(b);
    }
    DiskGeometry g = kGeometry;
    if ((mode & 4) != 0) g.layout_fingerprint ^= 1;
    max_sequence = in.U8();
    s.Write("checkpoint", EncodeDiskCheckpoint(g, epoch, generation, entries, max_sequence));
    if (checkpoint_valid) {
      for (const StoredBlock& b : entries) model.by_slot[b.slot] = b;
    }
  }

  // The journals of generations G and G + 1, and the model's replay of them.
  bool replay = checkpoint_valid;
  for (uint64_t gen = generation; gen <= generation + 1; ++gen) {
    std::vector<uint8_t> file;
    std::vector<StoredBlock> records;
    bool puts[24] = {};
    uint64_t sequences[24] = {};
    bool whole = false;
    if ((mode & 8) != 0) {
      file = in.Bytes(in.U8() * 4u);
    } else {
      whole = BuildJournal(in, mode, epoch, gen, &file, &records, puts, sequences);
    }
    s.Write("journal." + std::to_string(gen % 2), file);
    if (replay && (mode & 8) == 0) {
      for (size_t i = 0; i < records.size(); ++i) {
        if (puts[i]) {
          model.Put(records[i]);
          max_sequence = std::max(max_sequence, sequences[i]);
        } else {
          model.by_slot.erase(records[i].slot);
        }
      }
    }
    replay = replay && whole && (mode & 8) == 0;
  }

  const DiskJournal::Loaded loaded = DiskJournal::Load({.directory = s.dir, .geometry = kGeometry});
  CheckStoredBlocks(loaded.blocks, kSlots);
  if ((mode & 1) != 0) KVTIER_FUZZ_CHECK(!loaded.found && loaded.dropped == 0);
  if ((mode & 3) == 0) {
    // Built from the input: exactly the model's state.
    KVTIER_FUZZ_CHECK(loaded.found == checkpoint_valid);
    KVTIER_FUZZ_CHECK(loaded.dropped == (checkpoint_valid ? 0u : 1u));
    if ((mode & 8) == 0 && checkpoint_valid) {
      KVTIER_FUZZ_CHECK(loaded.blocks.size() == model.by_slot.size());
      size_t i = 0;
      for (const auto& [slot, b] : model.by_slot) {
        const StoredBlock& got = loaded.blocks[i++];
        KVTIER_FUZZ_CHECK(got.slot == slot && got.key == b.key && got.parent == b.parent);
      }
      KVTIER_FUZZ_CHECK(loaded.max_sequence == max_sequence);
    }
  }
}

}  // namespace
}  // namespace kvtier::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::internal::Run(data, size);
  return 0;
}
