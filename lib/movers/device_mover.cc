#include "lib/movers/device_mover.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "lib/common/status_macros.h"

namespace kvtier::internal {

DeviceMover::DeviceMover(const BlockLayout& layout, bool metadata_only, Index& index,
                         Device& device, HostPool& host, StorageMover& storage,
                         std::optional<BlockCodec> codec)
    : block_bytes_(layout.block_bytes()),
      metadata_only_(metadata_only),
      index_(index),
      device_(device),
      host_(host),
      storage_(storage),
      codec_(std::move(codec)) {
  // Where each layer's segments sit inside a contiguous host slot.
  uint64_t offset = 0;
  for (const LayerLayout& layer : layout.layers) {
    std::vector<SegmentAt> segs;
    for (const Segment& g : layer.segments) {
      segs.push_back({g, offset});
      offset += g.bytes_per_block;
    }
    layers_.push_back(std::move(segs));
  }
}

void DeviceMover::AppendLayerJobs(uint32_t layer, SlotId device_slot, std::byte* host_slot,
                                  bool encode,
                                  std::vector<codec_math::CodecSegmentJob>* out) const {
  const std::vector<SegmentAt>& segments = layers_[layer];
  auto raw = [&](size_t s) -> void* {
    const Segment& g = segments[s].segment;
    return static_cast<std::byte*>(g.base) + uint64_t{device_slot} * g.stride_bytes;
  };
  codec_->AppendLayerJobs(layer, raw, host_slot + codec_->layer_offset(layer), encode, out);
}

void DeviceMover::AppendLayerRegions(uint32_t layer, SlotId device_slot, std::byte* host,
                                     bool to_device, std::vector<CopyRegion>* out) const {
  for (const SegmentAt& s : layers_[layer]) {
    std::byte* dev =
        static_cast<std::byte*>(s.segment.base) + uint64_t{device_slot} * s.segment.stride_bytes;
    std::byte* h = host + s.host_offset;
    out->push_back(to_device ? CopyRegion{dev, h, s.segment.bytes_per_block}
                             : CopyRegion{h, dev, s.segment.bytes_per_block});
  }
}

absl::StatusOr<std::shared_ptr<DeviceEvent>> DeviceMover::EnqueueDemotionsLocked(
    std::vector<Move> demotions) {
  index_.mu().AssertHeld();
  const uint64_t bytes = demotions.size() * block_bytes_;
  const uint64_t start = MonotonicNanos();
  if (metadata_only_) {
    for (const Move& d : demotions) index_.FinishMoveLocked(d, true);
    storage_.StartWritesLocked();
    bytes_d2h_ += bytes;
    demotion_latency_.RecordSince(start);
    return std::shared_ptr<DeviceEvent>();
  }
  std::vector<CopyRegion> regions;
  std::vector<codec_math::CodecSegmentJob> jobs;
  absl::Status s;
  for (const Move& d : demotions) {
    // A host slot whose previous block is still being written below: wait for that write.
    if (s.ok()) {
      if (std::shared_ptr<HostEvent> w = storage_.PendingWriteLocked(d.to.slot)) {
        s = device_.WaitEvent(Stream::kD2H, w);
      }
    }
    for (uint32_t l = 0; l < layers_.size(); ++l) {
      if (codec_.has_value()) {
        AppendLayerJobs(l, d.from.slot, host_.slot_ptr(d.to.slot), /*encode=*/true, &jobs);
      } else {
        AppendLayerRegions(l, d.from.slot, host_.slot_ptr(d.to.slot), /*to_device=*/false,
                           &regions);
      }
    }
  }
  if (s.ok()) {
    s = codec_.has_value() ? device_.EncodeToHost(Stream::kD2H, codec_->params(), jobs)
                           : device_.Copy(Stream::kD2H, regions);
  }
  // The callback first, then the event: whoever waits on the event (AllocateDevice) finds the
  // index already updated.
  bool reported = false;
  if (s.ok()) {
    s = device_.AddCallback(Stream::kD2H, [this, demotions, start](absl::Status st) {
      const bool ok = st.ok();
      if (ok) WriteHeaders(demotions);
      {
        MutexLock lock(&index_.mu());
        for (const Move& d : demotions) index_.FinishMoveLocked(d, ok);
        storage_.StartWritesLocked();  // publications of what reached the host (write-through)
      }
      demotion_latency_.RecordSince(start);  // before the event: its waiters see the sample
    });
    reported = s.ok();
  }
  absl::StatusOr<std::shared_ptr<DeviceEvent>> event =
      s.ok() ? device_.RecordEvent(Stream::kD2H) : s;
  if (!reported) {  // the callback will not run: fail them now
    for (const Move& d : demotions) index_.FinishMoveLocked(d, false);
    demotion_latency_.RecordSince(start);
    return s;
  }
  if (!event.ok()) return event.status();  // the callback still reports them
  bytes_d2h_ += bytes;
  return event;
}

absl::StatusOr<std::shared_ptr<TransferState>> DeviceMover::StartLoadLocked(LoadPlan plan,
                                                                            uint64_t load_start) {
  index_.mu().AssertHeld();
  storage_.StartWritesLocked();  // the plan may have evicted host blocks to the tiers below
  const auto layers = static_cast<uint32_t>(layers_.size());
  auto state = std::make_shared<TransferState>(
      plan.blocks, static_cast<uint32_t>(plan.promotions.size()), layers);
  const uint32_t seq = ++load_sequence_;
  state->sequence = seq;
  // Layer l's counter, so that a captured graph waiting on it needs no per-Load handle
  // (docs/cuda.md, "CUDA graphs"): written on the counter stream once `layer_done` (this Load's
  // layer l event) completes. Loads' writes are enqueued there in Load order, each after its own
  // layer, so counter l >= seq means that every Load up to seq has its layer l, whichever of the
  // two H2D streams each used.
  const bool counters = !metadata_only_ && device_.counters() != nullptr;
  auto write_counter = [&](uint32_t l, std::shared_ptr<DeviceEvent> layer_done) -> absl::Status {
    if (!counters || l >= Device::kMaxLayerCounters) return absl::OkStatus();
    if (layer_done != nullptr) {
      KVTIER_RETURN_IF_ERROR(device_.WaitEvent(Stream::kCounters, std::move(layer_done)));
    }
    return device_.WriteCounter(Stream::kCounters, l, seq);
  };
  if (plan.promotions.empty() || metadata_only_) {  // nothing to copy, or nothing to wait for
    for (uint32_t l = 0; l < layers; ++l) {
      write_counter(l, nullptr).IgnoreError();  // fails on a failed device only
    }
    for (const Move& p : plan.promotions) {
      index_.FinishMoveLocked(p, true);
      if (p.from.tier != Tier::kHost) storage_.CountReadLocked(p.from.tier);
    }
    if (!plan.lossy_shared.empty()) {  // only shared blocks, some of them decoded by a codec
      const auto lossy = static_cast<uint32_t>(plan.lossy_shared.size());
      codec_lossy_loaded_.fetch_add(lossy, std::memory_order_relaxed);
      state->SetLossy(lossy);
    }
    bytes_h2d_ += plan.promotions.size() * block_bytes_;
    load_latency_.RecordSince(load_start);
    state->FinishNow();
    return state;
  }
  auto ctx = std::make_shared<LoadContext>();
  ctx->blocks = plan.blocks;
  ctx->lossy_shared = std::move(plan.lossy_shared);
  ctx->promotions = std::move(plan.promotions);
  ctx->read_failed.assign(ctx->promotions.size(), 0);
  ctx->source_lost.assign(ctx->promotions.size(), 0);
  const size_t n = ctx->promotions.size();
  // Blocks below the host are read into their host slots first; block i's device copies wait
  // for read i alone, so they overlap later reads.
  std::vector<std::shared_ptr<HostEvent>> read_done;
  storage_.StartReadsLocked(
      ctx->promotions,
      [ctx, state](size_t i, const absl::Status& st) {
        if (st.ok()) return;
        // A copy that failed to verify is dropped from its tier (the disk's; the remote tier
        // forgets it itself) so that the next Match does not find it again.
        ctx->read_failed[i] = 1;
        ctx->source_lost[i] = st.code() == absl::StatusCode::kDataLoss;
        state->RecordError(st);
      },
      &read_done);
  // A Load that waits for reads from below runs on its own stream, so that the reads' latency
  // never delays the host hits of the Loads after it (their copies on kH2D).
  const Stream h2d =
      std::any_of(read_done.begin(), read_done.end(), [](const auto& r) { return r != nullptr; })
          ? Stream::kH2DGated
          : Stream::kH2D;
  absl::Status s;
  std::vector<CopyRegion> regions;
  std::vector<codec_math::CodecSegmentJob> jobs;
  for (uint32_t l = 0; l < layers && s.ok(); ++l) {
    regions.clear();
    jobs.clear();
    if (codec_.has_value() && l == 0) {
      // With a codec every block's header is checked once all the reads are in, before layer 0
      // is decoded on the device. A decode of a refused block writes a device slot that the Load
      // does not publish (BlocksLoaded ends before it).
      for (size_t i = 0; i < n && s.ok(); ++i) {
        if (read_done[i] != nullptr) s = device_.WaitEvent(h2d, read_done[i]);
      }
      if (s.ok()) {
        s = device_.AddCallback(h2d, [this, ctx, state](absl::Status st) {
          if (!st.ok()) {  // handed on: the layer's own callback will see no error
            ctx->copy_failed.store(true);
            state->RecordError(st);
          }
          CheckHeaders(*ctx, *state);
        });
      }
    }
    for (size_t i = 0; i < n && s.ok(); ++i) {
      const Move& p = ctx->promotions[i];
      std::byte* host = host_.slot_ptr(p.host_slot());
      if (codec_.has_value()) {
        AppendLayerJobs(l, p.to.slot, host, /*encode=*/false, &jobs);
        continue;
      }
      if (l == 0 && read_done[i] != nullptr) {
        if (!regions.empty()) s = device_.Copy(h2d, regions);
        regions.clear();
        if (s.ok()) s = device_.WaitEvent(h2d, read_done[i]);
      }
      AppendLayerRegions(l, p.to.slot, host, /*to_device=*/true, &regions);
    }
    if (s.ok() && !regions.empty()) s = device_.Copy(h2d, regions);
    if (s.ok() && !jobs.empty()) s = device_.DecodeFromHost(h2d, codec_->params(), jobs);
    absl::StatusOr<std::shared_ptr<DeviceEvent>> event = s.ok() ? device_.RecordEvent(h2d) : s;
    if (!event.ok()) {
      s = event.status();
      break;
    }
    if (s = write_counter(l, *event); !s.ok()) break;
    state->layer_events.push_back(*event);
    const bool last = l + 1 == layers;
    s = device_.AddCallback(h2d, [this, state, ctx, last, load_start](absl::Status st) {
      if (!st.ok()) ctx->copy_failed.store(true);
      state->LayerDone(st);
      if (!last) return;
      // Partial: the blocks before the first failed one are published and stay in the lease;
      // that one and every later promotion are misses (their lease slots writable again), also
      // those whose reads verified: a block is only reachable through its prefix, and their
      // copies below (disk, store) are still there for the next Load once the engine has
      // committed the recomputed one.
      const uint32_t loaded = state->first_error().ok() ? ctx->blocks : BlocksLoaded(*ctx);
      if (codec_.has_value()) {  // what the engine got through the lossy codec
        uint64_t lossy = 0;
        for (const Move& p : ctx->promotions) lossy += p.position < loaded ? 1 : 0;
        for (uint32_t position : ctx->lossy_shared) lossy += position < loaded ? 1 : 0;
        codec_lossy_loaded_.fetch_add(lossy, std::memory_order_relaxed);
        state->SetLossy(static_cast<uint32_t>(lossy));
      }
      {
        MutexLock lock(&index_.mu());
        for (size_t i = 0; i < ctx->promotions.size(); ++i) {
          const Move& p = ctx->promotions[i];
          index_.FinishMoveLocked(p, p.position < loaded, ctx->source_lost[i] != 0);
        }
        if (loaded < ctx->blocks) {
          loads_failed_++;
          if (loaded > 0) loads_partial_++;
          blocks_load_lost_ += ctx->blocks - loaded;
        }
        in_flight_--;
      }
      load_latency_.RecordSince(load_start);  // before Finish: a waiter's next Stats() has it
      state->Finish(loaded);
    });
  }
  if (!s.ok()) {
    // Enqueueing failed (the device is unusable). The last layer's callback, the one that reports
    // to the index, is the last thing enqueued, so it is not queued: the promotions fail here.
    // Not before the reads already started have ended, though: they still write into the
    // promotions' host slots. Never wait for them under this lock: a read may start only once the
    // write still reading its slot completes, and that completion takes this lock. The last read
    // to end (or this thread, if none is left) reports the failure instead.
    auto left = std::make_shared<std::atomic<size_t>>(1);  // 1: this thread's share
    for (const auto& r : read_done) {
      if (r != nullptr) left->fetch_add(1);
    }
    auto fail = [this, ctx] {
      MutexLock lock(&index_.mu());
      for (const Move& p : ctx->promotions) index_.FinishMoveLocked(p, false);
    };
    for (const auto& r : read_done) {
      if (r == nullptr) continue;
      // Then() runs at once on this thread for a read that has ended: its share only counts down
      // (this thread's own share is still held, so it cannot reach zero here).
      r->Then([left, fail] {
        if (left->fetch_sub(1) == 1) fail();
      });
    }
    if (left->fetch_sub(1) == 1) {
      for (const Move& p : ctx->promotions) index_.FinishMoveLocked(p, false);
    }
    return s;
  }
  bytes_h2d_ += n * block_bytes_;
  in_flight_++;
  return state;
}

uint32_t DeviceMover::BlocksLoaded(const LoadContext& ctx) {
  if (ctx.promotions.empty()) return ctx.blocks;
  if (ctx.copy_failed.load()) return ctx.promotions.front().position;
  for (size_t i = 0; i < ctx.promotions.size(); ++i) {
    if (ctx.read_failed[i] != 0) return ctx.promotions[i].position;
  }
  // An error no read or layer reported (none today): nothing promoted counts.
  return ctx.promotions.front().position;
}

std::shared_ptr<DeviceMover::StoreJob> DeviceMover::BeginStoreLocked(std::vector<Move> moves,
                                                                     uint64_t start) {
  index_.mu().AssertHeld();
  auto job = std::make_shared<StoreJob>();
  const auto n = static_cast<uint32_t>(moves.size());
  job->moves = std::move(moves);
  job->start = start;
  job->state = std::make_shared<TransferState>(n, n, static_cast<uint32_t>(layers_.size()));
  job->state->layer_events.reserve(layers_.size());
  if (n == 0) {  // nothing to copy: done at once, every layer "saved"
    job->next_layer = static_cast<uint32_t>(layers_.size());
    job->ended = true;
    job->state->FinishNow();
  }
  return job;
}

void DeviceMover::FinishStoreLocked(std::span<const Move> moves, bool ok) {
  index_.mu().AssertHeld();
  for (const Move& m : moves) index_.FinishMoveLocked(m, ok);
  storage_.StartWritesLocked();  // below the host: write-through publication, disk write-back
}

absl::Status DeviceMover::SaveLayersLocked(StoreJob& job, uint32_t end,
                                           std::shared_ptr<DeviceEvent> after) {
  index_.mu().AssertHeld();
  const auto layers = static_cast<uint32_t>(layers_.size());
  if (job.ended || end <= job.next_layer) return absl::OkStatus();
  const std::shared_ptr<TransferState> state = job.state;
  if (metadata_only_) {
    for (; job.next_layer < end; ++job.next_layer) state->LayerDone(absl::OkStatus());
    bytes_d2h_ += job.moves.size() * block_bytes_;
    if (end == layers) {
      job.ended = true;
      FinishStoreLocked(job.moves, true);
      demotion_latency_.RecordSince(job.start);
      state->Finish();
    }
    return absl::OkStatus();
  }
  absl::Status s;
  if (after != nullptr) s = device_.WaitEvent(Stream::kD2H, std::move(after));
  if (s.ok() && job.next_layer == 0) {
    // A host slot whose previous block is still being written below: wait for that write.
    for (const Move& m : job.moves) {
      if (std::shared_ptr<HostEvent> w = storage_.PendingWriteLocked(m.to.slot)) {
        s = device_.WaitEvent(Stream::kD2H, w);
        if (!s.ok()) break;
      }
    }
  }
  std::vector<CopyRegion> regions;
  std::vector<codec_math::CodecSegmentJob> jobs;
  for (; s.ok() && job.next_layer < end; ++job.next_layer) {
    const uint32_t l = job.next_layer;
    regions.clear();
    jobs.clear();
    for (const Move& m : job.moves) {
      if (codec_.has_value()) {
        AppendLayerJobs(l, m.from.slot, host_.slot_ptr(m.to.slot), /*encode=*/true, &jobs);
      } else {
        AppendLayerRegions(l, m.from.slot, host_.slot_ptr(m.to.slot), /*to_device=*/false,
                           &regions);
      }
    }
    s = codec_.has_value() ? device_.EncodeToHost(Stream::kD2H, codec_->params(), jobs)
                           : device_.Copy(Stream::kD2H, regions);
    absl::StatusOr<std::shared_ptr<DeviceEvent>> event =
        s.ok() ? device_.RecordEvent(Stream::kD2H) : s;
    if (!event.ok()) {
      s = event.status();
      break;
    }
    state->layer_events.push_back(*event);
    const bool last = l + 1 == layers;
    // The last layer's callback reports the moves: it holds what it needs by value.
    s = device_.AddCallback(Stream::kD2H,
                            [this, state, last, moves = last ? job.moves : std::vector<Move>{},
                             start = job.start](absl::Status st) {
                              state->LayerDone(st);
                              if (!last) return;
                              const bool ok = state->first_error().ok();
                              if (ok) WriteHeaders(moves);
                              {
                                MutexLock lock(&index_.mu());
                                FinishStoreLocked(moves, ok);
                              }
                              demotion_latency_.RecordSince(start);
                              state->Finish();
                            });
    if (!s.ok()) break;
    for (const SegmentAt& g : layers_[l])
      bytes_d2h_ += job.moves.size() * g.segment.bytes_per_block;
    if (last) job.ended = true;
  }
  if (!s.ok() && !job.ended) {
    // The device is unusable: the last layer's callback will not be queued. Report now.
    job.ended = true;
    state->RecordError(s);
    FinishStoreLocked(job.moves, false);
    demotion_latency_.RecordSince(job.start);
    state->Finish();
  }
  return s;
}

void DeviceMover::AbandonStoreLocked(StoreJob& job) {
  index_.mu().AssertHeld();
  if (job.ended) return;
  job.ended = true;
  const std::shared_ptr<TransferState> state = job.state;
  state->RecordError(absl::CancelledError(
      "Connector store: abandoned before every layer was saved; its blocks were not stored"));
  if (job.next_layer > 0 && !metadata_only_) {
    // After the copies already enqueued, which still write into the host slots.
    absl::Status s =
        device_.AddCallback(Stream::kD2H, [this, state, moves = job.moves](absl::Status) {
          {
            MutexLock lock(&index_.mu());
            FinishStoreLocked(moves, false);
          }
          state->Finish();
        });
    if (s.ok()) return;
  }
  FinishStoreLocked(job.moves, false);
  state->Finish();
}

void DeviceMover::DrainDeviceToHost() {
  auto event = device_.RecordEvent(Stream::kD2H);
  if (event.ok()) (*event)->Wait().IgnoreError();
}

void DeviceMover::FillStats(CacheStats* stats) const {
  index_.mu().AssertHeld();
  stats->bytes_h2d = bytes_h2d_;
  stats->bytes_d2h = bytes_d2h_;
  stats->transfers_in_flight = in_flight_;
  stats->loads_failed = loads_failed_;
  stats->loads_partial = loads_partial_;
  stats->blocks_load_lost = blocks_load_lost_;
  stats->load_latency = load_latency_.Snapshot();
  stats->demotion_latency = demotion_latency_.Snapshot();
  stats->codec_lossy_blocks_loaded = codec_lossy_loaded_.load(std::memory_order_relaxed);
  stats->codec_refused_blocks = codec_refused_.load(std::memory_order_relaxed);
}

void DeviceMover::WriteHeaders(std::span<const Move> moves) {
  if (!codec_.has_value()) return;
  for (const Move& m : moves) codec_->EncodeHeader(host_.slot_ptr(m.to.slot));
}

void DeviceMover::CheckHeaders(LoadContext& ctx, TransferState& state) {
  for (size_t i = 0; i < ctx.promotions.size(); ++i) {
    // A block another codec (or version, group size, element type) encoded is refused: a miss,
    // never misread data. Its copy below is dropped as one that failed to verify.
    const std::byte* enc = host_.slot_ptr(ctx.promotions[i].host_slot());
    if (absl::Status h = codec_->CheckHeader(enc); !h.ok()) {
      if (state.first_error().ok()) codec_refused_.fetch_add(1, std::memory_order_relaxed);
      ctx.source_lost[i] = 1;
      ctx.read_failed[i] = 1;  // a partial Load ends before it (BlocksLoaded)
      state.RecordError(h);
    }
  }
}

}  // namespace kvtier::internal
