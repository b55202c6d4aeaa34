/* c_api_test: the C API (kvtier/kvtier.h) from a C99 program, on the emulated device.
 *
 * The engine lifecycle with byte verification (device hits, host hits after eviction, disk hits
 * after a warm restart), then every misuse the header documents as detected; the same for
 * connector mode (stores from and loads into the engine's own blocks). Stops at the first
 * failed check with exit status 1. Usage: c_api_test [scratch directory, default "."]. */
#define _XOPEN_SOURCE 700 /* mkdir, snprintf under -std=c99 -pedantic */

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "kvtier/kvtier.h"

#define CHECK(cond)                                                                               \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: \"%s\"\n", __FILE__, __LINE__, #cond, \
              kvtier_last_error());                                                               \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

#define CHECK_CODE(expr, code)                                                              \
  do {                                                                                      \
    kvtier_status s_ = (expr);                                                              \
    if (s_ != (code)) {                                                                     \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s; last error: \"%s\"\n", __FILE__, \
              __LINE__, #expr, kvtier_status_name(s_), kvtier_status_name(code),            \
              kvtier_last_error());                                                         \
      exit(1);                                                                              \
    }                                                                                       \
    /* A failure always explains itself; a success leaves no message. */                    \
    if ((code) == KVTIER_OK) {                                                              \
      CHECK(kvtier_last_error()[0] == '\0');                                                \
    } else {                                                                                \
      CHECK(kvtier_last_error()[0] != '\0');                                                \
    }                                                                                       \
  } while (0)

#define CHECK_OK(expr) CHECK_CODE(expr, KVTIER_OK)

enum { kLayers = 4, kSegs = 2, kTpb = 16, kSlots = 16, kSegBytes = 512, kBlocks = 4 };

static unsigned char g_kv[kLayers * kSegs][kSlots * kSegBytes]; /* the engine's KV tensors */
static kvtier_segment g_segments[kLayers * kSegs];

static unsigned char Expected(kvtier_block_key key, uint32_t layer, uint32_t seg, uint64_t i) {
  uint64_t x = key.hi ^ (key.lo + 0x9E3779B97F4A7C15ULL * (layer * 2 + seg + 1)) ^ (i / 8);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return (unsigned char)(x >> (8 * (i % 8)));
}

static kvtier_options BaseOptions(void) {
  kvtier_options o;
  int i;
  kvtier_options_init(&o);
  for (i = 0; i < kLayers * kSegs; ++i) {
    g_segments[i].base = g_kv[i];
    g_segments[i].bytes_per_block = kSegBytes;
    g_segments[i].stride_bytes = 0; /* = bytes_per_block */
  }
  o.tokens_per_block = kTpb;
  o.num_slots = kSlots;
  o.num_layers = kLayers;
  o.segments_per_layer = kSegs;
  o.segments = g_segments;
  o.backend = KVTIER_BACKEND_EMULATED;
  o.host_capacity_bytes = (uint64_t)kSlots * kLayers * kSegs * kSegBytes;
  return o;
}

static void Fill(kvtier_lease* lease, const kvtier_block_key* keys, uint32_t from, uint32_t to) {
  uint32_t b, l, s;
  uint64_t i;
  for (b = from; b < to; ++b) {
    for (l = 0; l < kLayers; ++l) {
      for (s = 0; s < kSegs; ++s) {
        void* addr = NULL;
        uint64_t bytes = 0;
        CHECK_OK(kvtier_lease_block_address(lease, b, l, s, &addr, &bytes));
        CHECK(addr != NULL && bytes == kSegBytes);
        for (i = 0; i < bytes; ++i) ((unsigned char*)addr)[i] = Expected(keys[b], l, s, i);
      }
    }
  }
}

/* Mismatched bytes of layer `layer` of blocks [0, n). */
static uint64_t Verify(kvtier_lease* lease, const kvtier_block_key* keys, uint32_t n,
                       uint32_t layer) {
  uint64_t bad = 0, i;
  uint32_t b, s;
  for (b = 0; b < n; ++b) {
    for (s = 0; s < kSegs; ++s) {
      void* addr = NULL;
      uint64_t bytes = 0;
      CHECK_OK(kvtier_lease_block_address(lease, b, layer, s, &addr, &bytes));
      for (i = 0; i < bytes; ++i)
        bad += ((unsigned char*)addr)[i] != Expected(keys[b], layer, s, i);
    }
  }
  return bad;
}

/* One request: match, allocate, load, wait per layer and verify, fill the rest, commit, release.
 * Returns the tier counts of the match in hits[3]. */
static void Request(kvtier_cache* cache, const kvtier_block_key* keys, uint32_t n,
                    uint32_t hits[3]) {
  kvtier_match* match = NULL;
  kvtier_lease* lease = NULL;
  kvtier_transfer* xfer = NULL;
  uint32_t matched = 0, loaded = 0, promoted = 0, l, t, slots[kBlocks];
  kvtier_tier tiers[kBlocks];
  bool done = false;
  void* event = (void*)1;

  CHECK_OK(kvtier_cache_match(cache, keys, n, &match));
  CHECK_OK(kvtier_match_size(match, &matched));
  CHECK_OK(kvtier_match_tiers(match, tiers, kBlocks));
  for (t = 0; t < 3; ++t) CHECK_OK(kvtier_match_blocks_in(match, (kvtier_tier)t, &hits[t]));
  CHECK(hits[0] + hits[1] + hits[2] == matched);
  for (t = 0; t < matched; ++t) CHECK(tiers[t] <= KVTIER_TIER_DISK);

  CHECK_OK(kvtier_cache_allocate_device(cache, n, &lease));
  CHECK_OK(kvtier_cache_load(cache, match, lease, &xfer));
  CHECK_OK(kvtier_transfer_blocks(xfer, &loaded, &promoted));
  CHECK(loaded == matched); /* single-threaded: nothing was evicted in between */
  CHECK(promoted == hits[1] + hits[2]);
  for (l = 0; l < kLayers; ++l) {
    CHECK_OK(kvtier_transfer_layer_ready_event(xfer, l, &event));
    CHECK(event == NULL); /* always NULL on the emulated device */
    CHECK_OK(kvtier_transfer_wait_layer(xfer, l));
    CHECK(Verify(lease, keys, loaded, l) == 0);
  }
  CHECK_OK(kvtier_transfer_wait(xfer));
  CHECK_OK(kvtier_transfer_poll(xfer, &done));
  CHECK(done);
  CHECK_OK(kvtier_transfer_status(xfer));
  CHECK_OK(kvtier_transfer_blocks_loaded(xfer, &promoted));
  CHECK(promoted == loaded); /* succeeded: every block */
  CHECK_OK(kvtier_lease_slots(lease, slots, kBlocks));
  for (t = 0; t < n; ++t) CHECK(slots[t] < kSlots);

  Fill(lease, keys, loaded, n);
  CHECK_OK(kvtier_cache_commit(cache, keys, n, lease));
  CHECK_OK(kvtier_cache_release(cache, lease));
  kvtier_lease_destroy(lease);
  kvtier_transfer_destroy(xfer);
  kvtier_match_destroy(match);
  CHECK_OK(kvtier_cache_check_invariants(cache));
}

static void Prompt(kvtier_hasher* hasher, int32_t seed, kvtier_block_key keys[kBlocks]) {
  int32_t tokens[kBlocks * kTpb];
  size_t i, nkeys = 0;
  kvtier_block_key k;
  for (i = 0; i < kBlocks * kTpb; ++i) tokens[i] = seed * 100000 + (int32_t)i;
  CHECK_OK(kvtier_hasher_chain_tokens(hasher, tokens, kBlocks * kTpb, kTpb, keys, kBlocks, &nkeys));
  CHECK(nkeys == kBlocks);
  /* chain_tokens is Chain from the root, block by block */
  CHECK_OK(kvtier_hasher_chain(hasher, NULL, tokens, kTpb, &k));
  CHECK(k.hi == keys[0].hi && k.lo == keys[0].lo);
  CHECK_OK(kvtier_hasher_chain(hasher, &keys[0], tokens + kTpb, kTpb, &k));
  CHECK(k.hi == keys[1].hi && k.lo == keys[1].lo);
}

static void TestLifecycle(void) {
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = NULL;
  kvtier_hasher* hasher = NULL;
  kvtier_block_key keys[kBlocks];
  uint32_t hits[3];
  kvtier_lease* hog = NULL;
  kvtier_stats st;
  uint64_t block_bytes = 0;

  CHECK_OK(kvtier_cache_create(&o, &cache));
  CHECK_OK(kvtier_cache_block_bytes(cache, &block_bytes));
  CHECK(block_bytes == (uint64_t)kLayers * kSegs * kSegBytes);
  CHECK_OK(kvtier_hasher_create("c-test", NULL, "t0", &hasher));
  Prompt(hasher, 1, keys);

  Request(cache, keys, kBlocks, hits); /* cold: everything computed */
  CHECK(hits[0] == 0 && hits[1] == 0 && hits[2] == 0);
  Request(cache, keys, kBlocks, hits); /* warm: all on the device */
  CHECK(hits[0] == kBlocks);

  /* Take every device slot: the 4 blocks are evicted (demoted to the host). */
  CHECK_OK(kvtier_cache_allocate_device(cache, kSlots, &hog));
  CHECK_OK(kvtier_cache_release(cache, hog));
  kvtier_lease_destroy(hog);
  Request(cache, keys, kBlocks, hits); /* promoted from the host, bytes verified */
  CHECK(hits[1] == kBlocks);

  {
    kvtier_block_key hk[2];
    double scores[2] = {1.0, 2.0};
    hk[0] = keys[0];
    hk[1] = keys[1];
    CHECK_OK(kvtier_cache_hint(cache, hk, scores, 2));
  }
  memset(&st, 0, sizeof(st));
  st.struct_size = sizeof(st);
  CHECK_OK(kvtier_cache_stats(cache, &st));
  CHECK(st.struct_size == sizeof(st));
  CHECK(st.match_calls == 3);
  CHECK(st.blocks_queried == 3 * kBlocks);
  CHECK(st.blocks_missed == kBlocks);
  CHECK(st.device.hits == kBlocks && st.host.hits == kBlocks);
  CHECK(st.blocks_committed == kBlocks);
  CHECK(st.promotions == kBlocks && st.bytes_h2d == kBlocks * block_bytes);
  CHECK(st.device.capacity_blocks == kSlots);
  CHECK(st.leases_live == 0);
  CHECK(st.hit_ratio > 0.66 && st.hit_ratio < 0.67);

  kvtier_hasher_destroy(hasher);
  CHECK_OK(kvtier_cache_close(cache));
  kvtier_cache_destroy(cache);
}

/* KV events: none by default; with "events.capacity" each commit is a STORED event, in order, and
 * what does not fit is dropped and counted. */
static void TestEvents(void) {
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = NULL;
  kvtier_hasher* hasher = NULL;
  kvtier_block_key keys[kBlocks];
  kvtier_event ev[8];
  size_t n = 99;
  uint32_t hits[3], i;
  kvtier_stats st;

  CHECK_OK(kvtier_hasher_create("c-test", NULL, "t0", &hasher));
  Prompt(hasher, 3, keys);
  CHECK_OK(kvtier_cache_create(&o, &cache)); /* off by default */
  Request(cache, keys, kBlocks, hits);
  CHECK_OK(kvtier_cache_take_events(cache, ev, 8, &n));
  CHECK(n == 0);
  CHECK_OK(kvtier_cache_close(cache));
  kvtier_cache_destroy(cache);

  CHECK_OK(kvtier_options_set(&o, "events.capacity", "3"));
  CHECK_OK(kvtier_cache_create(&o, &cache));
  Request(cache, keys, kBlocks, hits); /* 4 STORED events, room for 3 */
  CHECK_CODE(kvtier_cache_take_events(cache, NULL, 1, &n), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_take_events(cache, ev, 8, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_take_events(NULL, ev, 8, &n), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_take_events(cache, NULL, 0, &n));
  CHECK(n == 0);
  CHECK_OK(kvtier_cache_take_events(cache, ev, 2, &n));
  CHECK(n == 2);
  CHECK_OK(kvtier_cache_take_events(cache, ev + 2, 6, &n));
  CHECK(n == 1);
  for (i = 0; i < 3; ++i) {
    CHECK(ev[i].seq == i);
    CHECK(ev[i].type == KVTIER_EVENT_STORED && ev[i].tier == KVTIER_TIER_DEVICE);
    CHECK(ev[i].tokens_per_block == kTpb);
    CHECK(ev[i].key.hi == keys[i].hi && ev[i].key.lo == keys[i].lo);
  }
  CHECK(ev[0].parent.hi == 0 && ev[0].parent.lo == 0);
  CHECK(ev[2].parent.hi == keys[1].hi && ev[2].parent.lo == keys[1].lo);
  memset(&st, 0, sizeof(st));
  st.struct_size = sizeof(st);
  CHECK_OK(kvtier_cache_stats(cache, &st));
  CHECK(st.events_dropped == 1);
  /* a caller's struct that ends before events_dropped: nothing is written there */
  memset(&st, 0xEE, sizeof(st));
  st.struct_size = offsetof(kvtier_stats, events_dropped);
  CHECK_OK(kvtier_cache_stats(cache, &st));
  CHECK(st.events_dropped == 0xEEEEEEEEEEEEEEEEull);
  CHECK_OK(kvtier_cache_close(cache));
  CHECK_CODE(kvtier_cache_take_events(cache, ev, 8, &n), KVTIER_FAILED_PRECONDITION);
  kvtier_cache_destroy(cache);
  kvtier_options_free_values(&o);
  kvtier_hasher_destroy(hasher);
}

/* The management calls, each with its bad input; the cache serves requests after each. */
static void TestManagement(void) {
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = NULL;
  kvtier_hasher* hasher = NULL;
  kvtier_block_key keys[kBlocks], root[1];
  kvtier_manage_result r;
  kvtier_transfer* x = NULL;
  kvtier_event ev[8];
  size_t n = 0;
  uint32_t hits[3], blocks = 0, promoted = 0;
  double scores[kBlocks] = {90, 80, 70, 60};

  memset(root, 0, sizeof(root));
  CHECK_OK(kvtier_options_set(&o, "events.capacity", "64"));
  CHECK_OK(kvtier_cache_create(&o, &cache));
  CHECK_OK(kvtier_hasher_create("c-test", NULL, "t0", &hasher));
  Prompt(hasher, 5, keys);
  Request(cache, keys, kBlocks, hits); /* on the device */

  CHECK_OK(kvtier_cache_pin(cache, keys, kBlocks, 60000, &r));
  CHECK(r.done == kBlocks && r.not_found == 0);
  CHECK_CODE(kvtier_cache_pin(cache, keys, kBlocks, 0, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_pin(cache, keys, kBlocks, 86400001, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_pin(cache, keys, kBlocks, UINT64_MAX, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_pin(cache, keys, kBlocks, 1000, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_pin(cache, root, 1, 1000, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_unpin(cache, keys, kBlocks, &r));
  CHECK(r.done == kBlocks);
  CHECK_OK(kvtier_cache_unpin(cache, keys, kBlocks, &r));
  CHECK(r.not_found == kBlocks);

  CHECK_OK(kvtier_cache_hint_for(cache, keys, scores, kBlocks, 1000));
  CHECK_CODE(kvtier_cache_hint_for(cache, keys, NULL, kBlocks, 1000), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_hint_for(cache, keys, scores, kBlocks, 0), KVTIER_INVALID_ARGUMENT);

  /* on the device already: the prefetch covers the chain and reads nothing */
  CHECK_OK(kvtier_cache_prefetch(cache, keys, kBlocks, &x));
  CHECK_OK(kvtier_transfer_wait(x));
  CHECK_OK(kvtier_transfer_blocks(x, &blocks, &promoted));
  CHECK(blocks == kBlocks && promoted == 0);
  CHECK_CODE(kvtier_transfer_wait_layer(x, 0), KVTIER_OUT_OF_RANGE);
  kvtier_transfer_destroy(x);
  CHECK_CODE(kvtier_cache_prefetch(cache, keys, kBlocks, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_prefetch(cache, NULL, 2, &x), KVTIER_INVALID_ARGUMENT);

  CHECK_OK(kvtier_cache_take_events(cache, ev, 8, &n)); /* the commit's */
  CHECK_CODE(kvtier_cache_clear(cache, (kvtier_tier)7, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_clear(cache, KVTIER_TIER_DEVICE, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_clear(cache, KVTIER_TIER_DEVICE, &r));
  CHECK(r.done == kBlocks && r.busy == 0);
  CHECK_OK(kvtier_cache_take_events(cache, ev, 8, &n));
  CHECK(n == 1 && ev[0].type == KVTIER_EVENT_ALL_CLEARED && ev[0].tier == KVTIER_TIER_DEVICE);
  Request(cache, keys, kBlocks, hits); /* computed again */
  CHECK(hits[0] + hits[1] + hits[2] == 0);

  CHECK_CODE(kvtier_cache_remove(cache, root, 1, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_remove(cache, NULL, 1, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_remove(cache, keys, kBlocks, &r));
  CHECK(r.done == kBlocks);
  CHECK_OK(kvtier_cache_remove(cache, keys, kBlocks, &r));
  CHECK(r.not_found == kBlocks);
  Request(cache, keys, kBlocks, hits);
  CHECK(hits[0] + hits[1] + hits[2] == 0);
  CHECK_OK(kvtier_cache_check_invariants(cache));

  CHECK_OK(kvtier_cache_close(cache));
  CHECK_CODE(kvtier_cache_remove(cache, keys, kBlocks, &r), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_clear(cache, KVTIER_TIER_HOST, &r), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_prefetch(cache, keys, kBlocks, &x), KVTIER_FAILED_PRECONDITION);
  kvtier_cache_destroy(cache);
  kvtier_options_free_values(&o);
  kvtier_hasher_destroy(hasher);
}

/* With a disk directory: what one cache commits, the next one (same directory) serves. */
static void TestDiskWarmRestart(const char* scratch) {
  char dir[4096];
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = NULL;
  kvtier_hasher* hasher = NULL;
  kvtier_block_key keys[kBlocks];
  uint32_t hits[3];
  const uint64_t disk_bytes = 64 * ((uint64_t)kLayers * kSegs * kSegBytes + (64 << 10));

  snprintf(dir, sizeof(dir), "%s/c_api_test_disk", scratch);
  mkdir(dir, 0755); /* may exist from an earlier run: reset_on_mismatch, and keys are reused */
  o.disk_reset_on_mismatch = true;
  o.disk_allow_buffered = true;
  CHECK_OK(kvtier_hasher_create("c-test-disk", NULL, NULL, &hasher));
  Prompt(hasher, 2, keys);

  CHECK_OK(kvtier_cache_open(&o, dir, disk_bytes, &cache));
  Request(cache, keys, kBlocks, hits);
  kvtier_cache_destroy(cache); /* flushes down to disk, writes the manifest */

  CHECK_OK(kvtier_cache_open(&o, dir, disk_bytes, &cache));
  Request(cache, keys, kBlocks, hits);
  CHECK(hits[2] == kBlocks); /* served from the previous cache's disk blocks, bytes verified */
  kvtier_cache_destroy(cache);
  kvtier_hasher_destroy(hasher);
}

static void TestBadOptions(void) {
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = (kvtier_cache*)1;
  unsigned char big[sizeof(kvtier_options) + 16];

  CHECK_CODE(kvtier_cache_create(NULL, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK(cache == NULL); /* out pointers are cleared on failure */
  CHECK_CODE(kvtier_cache_create(&o, NULL), KVTIER_INVALID_ARGUMENT);

  o.struct_size = 0;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o.struct_size = KVTIER_OPTIONS_SIZE_V1 - 8;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);

  /* A newer caller's larger struct: accepted when the unknown tail is zero. */
  o = BaseOptions();
  memset(big, 0, sizeof(big));
  o.struct_size = sizeof(big);
  memcpy(big, &o, sizeof(o));
  CHECK_OK(kvtier_cache_create((const kvtier_options*)(const void*)big, &cache));
  kvtier_cache_destroy(cache);
  big[sizeof(big) - 1] = 1;
  CHECK_CODE(kvtier_cache_create((const kvtier_options*)(const void*)big, &cache),
             KVTIER_INVALID_ARGUMENT);

  o = BaseOptions();
  o.segments = NULL;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.num_slots = 0;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.num_layers = 0;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.num_layers = 1u << 30;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.backend = (kvtier_backend)42;
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.host_policy = "no-such-policy";
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT); /* a bad option value */
  o = BaseOptions();
  o.host_capacity_bytes = 1; /* less than a block */
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  CHECK_CODE(kvtier_cache_open(&o, NULL, 1 << 20, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_open(NULL, ".", 1 << 20, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_open(&o, "/nonexistent/kvtier-dir", 1 << 20, &cache),
             KVTIER_NOT_FOUND); /* ENOENT */
  o.backend = KVTIER_BACKEND_CUDA;
  {
    /* No CUDA backend in this build: UNIMPLEMENTED. With one: FAILED_PRECONDITION when there is no
       device or the layout is host memory (as here), OK only if it is device memory. */
    kvtier_status s = kvtier_cache_create(&o, &cache);
    CHECK(s == KVTIER_UNIMPLEMENTED || s == KVTIER_FAILED_PRECONDITION || s == KVTIER_OK ||
          s == KVTIER_INVALID_ARGUMENT);
    if (s == KVTIER_OK) kvtier_cache_destroy(cache);
  }
}

static int Contains(const char* haystack, const char* needle) {
  return strstr(haystack, needle) != NULL;
}

/* kvtier_options_set: any option by its path, the remote tier's included. */
static void TestOptionValues(const char* scratch) {
  kvtier_options o = BaseOptions();
  kvtier_options* v1;
  kvtier_cache* cache = (kvtier_cache*)1;
  char dir[4096];

  /* Values are parsed when set: an unknown path or a bad value names the path, stores nothing. */
  CHECK_CODE(kvtier_options_set(&o, "remote.nodez", "x"), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "Options.remote.nodez"));
  CHECK_CODE(kvtier_options_set(&o, "remote.publish", "x"), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "Options.remote.publish: 'x'"));
  CHECK_CODE(kvtier_options_set(&o, "remote.timeout_ms", "-5"), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "Options.remote.timeout_ms"));
  CHECK(o.values == NULL);
  CHECK_CODE(kvtier_options_set(NULL, "remote.nodes", "x"), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_options_set(&o, NULL, "x"), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_options_set(&o, "remote.nodes", NULL), KVTIER_INVALID_ARGUMENT);

  /* Applied at create, after the struct's fields: a remote tier with a bad thread count fails
     Validate, before any connection, naming the field. */
  CHECK_OK(kvtier_options_set(&o, "remote.nodes", "127.0.0.1:1"));
  CHECK_OK(kvtier_options_set(&o, "remote.threads", "0"));
  CHECK(o.values != NULL);
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK(cache == NULL);
  CHECK(Contains(kvtier_last_error(), "Options.remote.threads"));
  /* Set again: replaced. Nothing listens on port 1: create fails fast, naming the nodes. */
  CHECK_OK(kvtier_options_set(&o, "remote.threads", "1"));
  CHECK_OK(kvtier_options_set(&o, "remote.connect_timeout_ms", "100"));
  CHECK_OK(kvtier_options_set(&o, "remote.scope", "c-api-test"));
  CHECK_OK(kvtier_options_set(&o, "remote.publish", "write-back"));
  CHECK(kvtier_cache_create(&o, &cache) != KVTIER_OK);
  CHECK(cache == NULL);
  CHECK(Contains(kvtier_last_error(), "Options.remote.nodes"));
  kvtier_options_free_values(&o);
  CHECK(o.values == NULL);
  kvtier_options_free_values(&o); /* twice: a no-op */
  kvtier_options_free_values(NULL);

  /* The shard identity, only settable by path: validated at create, naming the field. */
  o = BaseOptions();
  CHECK_OK(kvtier_options_set(&o, "shard.tp_size", "2"));
  CHECK_OK(kvtier_options_set(&o, "shard.tp_rank", "2"));
  CHECK_OK(kvtier_options_set(&o, "shard.dtype", "bfloat16"));
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "Options.shard.tp_rank"));
  CHECK_OK(kvtier_options_set(&o, "shard.tp_rank", "1"));
  CHECK_OK(kvtier_cache_create(&o, &cache));
  kvtier_cache_destroy(cache);
  kvtier_options_free_values(&o);

  /* The segments' roles, by path: what the int8 and int4 host codecs need. Names are checked when
     set, their count against segments_per_layer at create. */
  o = BaseOptions();
  CHECK_OK(kvtier_options_set(&o, "shard.dtype", "bfloat16"));
  CHECK_OK(kvtier_options_set(&o, "host.codec", "int8"));
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "role is unspecified"));
  CHECK_CODE(kvtier_options_set(&o, "layout.segment_roles", "k,q"), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "layout.segment_roles: segment role 'q'"));
  CHECK_OK(kvtier_options_set(&o, "layout.segment_roles", "k"));
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "layout.segment_roles: 1 roles vs layer 0's 2 segments"));
  CHECK_OK(kvtier_options_set(&o, "layout.segment_roles", "key, value"));
  CHECK_OK(kvtier_cache_create(&o, &cache));
  kvtier_cache_destroy(cache);
  kvtier_options_free_values(&o);

  /* A path overrides its struct field; the struct keeps working without values. */
  o = BaseOptions();
  CHECK_OK(kvtier_options_set(&o, "host.capacity_bytes", "1")); /* less than a block */
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT);
  CHECK(Contains(kvtier_last_error(), "Options.host.capacity_bytes"));
  CHECK_OK(kvtier_options_set(&o, "host.capacity_bytes", "0")); /* no host tier: fine */
  CHECK_OK(kvtier_options_set(&o, "device.policy_params", ""));
  CHECK_OK(kvtier_options_set(&o, "disk.allow_buffered", "true"));
  CHECK_OK(kvtier_cache_create(&o, &cache));
  kvtier_cache_destroy(cache);
  kvtier_options_free_values(&o);

  /* A struct from a version-1 header (no `values`): create and open accept it, reading nothing
     past its struct_size (ASan would see it: the copy is exactly that large); set refuses it. */
  o = BaseOptions();
  o.struct_size = KVTIER_OPTIONS_SIZE_V1;
  o.disk_allow_buffered = true;
  o.disk_reset_on_mismatch = true;
  /* Only its first KVTIER_OPTIONS_SIZE_V1 bytes exist: fields are set in `o` above, not here. */
  v1 = (kvtier_options*)malloc(KVTIER_OPTIONS_SIZE_V1);
  CHECK(v1 != NULL);
  memcpy(v1, &o, KVTIER_OPTIONS_SIZE_V1);
  CHECK_OK(kvtier_cache_create(v1, &cache));
  kvtier_cache_destroy(cache);
  snprintf(dir, sizeof(dir), "%s/c_api_test_disk", scratch);
  mkdir(dir, 0755);
  CHECK_OK(kvtier_cache_open(v1, dir, 64 * ((uint64_t)kLayers * kSegs * kSegBytes + (64 << 10)),
                             &cache));
  kvtier_cache_destroy(cache);
  CHECK_CODE(kvtier_options_set(v1, "remote.scope", "x"), KVTIER_INVALID_ARGUMENT);
  kvtier_options_free_values(v1); /* a no-op: the struct has no values field */
  free(v1);
}

static void TestBadCalls(void) {
  kvtier_options o = BaseOptions();
  kvtier_cache *cache = NULL, *other = NULL;
  kvtier_hasher* hasher = NULL;
  kvtier_match* match = NULL;
  kvtier_lease *lease = NULL, *foreign = NULL, *live = NULL;
  kvtier_transfer* xfer = NULL;
  kvtier_block_key keys[kBlocks], k;
  int32_t tokens[kBlocks * kTpb];
  size_t nkeys = 0;
  uint32_t u = 0, slots[kSlots];
  kvtier_tier tiers[kBlocks];
  void* addr = NULL;
  bool done = false;
  kvtier_stats st;
  double scores[kBlocks] = {0};

  memset(tokens, 0, sizeof(tokens));
  CHECK(strcmp(kvtier_status_name(KVTIER_FAILED_PRECONDITION), "FAILED_PRECONDITION") == 0);
  CHECK(strcmp(kvtier_status_name((kvtier_status)99), "UNKNOWN_CODE") == 0);

  /* hasher */
  CHECK_CODE(kvtier_hasher_create(NULL, NULL, NULL, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_hasher_create(NULL, NULL, NULL, &hasher));
  CHECK_CODE(kvtier_hasher_chain(NULL, NULL, tokens, kTpb, &k), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain(hasher, NULL, NULL, kTpb, &k), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain(hasher, NULL, tokens, kTpb, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain_tokens(hasher, tokens, kTpb + 1, kTpb, keys, kBlocks, &nkeys),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain_tokens(hasher, tokens, kTpb, 0, keys, kBlocks, &nkeys),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain_tokens(hasher, NULL, kTpb, kTpb, keys, kBlocks, &nkeys),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain_tokens(hasher, tokens, kTpb, kTpb, NULL, kBlocks, &nkeys),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain_tokens(hasher, tokens, kTpb, kTpb, keys, kBlocks, NULL),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_hasher_chain_tokens(hasher, tokens, kBlocks * kTpb, kTpb, keys, 2, &nkeys),
             KVTIER_OUT_OF_RANGE);
  CHECK(nkeys == kBlocks); /* says how many are needed */
  CHECK_OK(kvtier_hasher_chain_tokens(hasher, tokens, 0, kTpb, NULL, 0, &nkeys));
  CHECK(nkeys == 0);
  CHECK_OK(kvtier_hasher_chain_tokens(hasher, tokens, kBlocks * kTpb, kTpb, keys, kBlocks, &nkeys));

  CHECK_OK(kvtier_cache_create(&o, &cache));
  CHECK_OK(kvtier_cache_create(&o, &other));

  /* NULL handles and NULL arrays with nonzero counts */
  CHECK_CODE(kvtier_cache_match(NULL, keys, kBlocks, &match), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_match(cache, NULL, kBlocks, &match), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_match(cache, keys, kBlocks, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_allocate_device(NULL, 1, &lease), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_allocate_device(cache, 1, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_grow(cache, NULL, 1), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_load(cache, NULL, NULL, &xfer), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_commit(cache, keys, 1, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_release(NULL, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_hint(NULL, keys, scores, 1), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_hint(cache, NULL, scores, 1), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_hint(cache, keys, NULL, 1), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_hint(cache, NULL, NULL, 0));
  CHECK_CODE(kvtier_cache_stats(NULL, &st), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_stats(cache, NULL), KVTIER_INVALID_ARGUMENT);
  st.struct_size = 0;
  CHECK_CODE(kvtier_cache_stats(cache, &st), KVTIER_INVALID_ARGUMENT);
  st.struct_size = sizeof(st) / 2;
  CHECK_CODE(kvtier_cache_stats(cache, &st), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_block_bytes(cache, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_slot_address(cache, kSlots, 0, 0, &addr, NULL), KVTIER_OUT_OF_RANGE);
  CHECK_CODE(kvtier_cache_slot_address(cache, 0, kLayers, 0, &addr, NULL), KVTIER_OUT_OF_RANGE);
  CHECK_CODE(kvtier_cache_slot_address(cache, 0, 0, kSegs, &addr, NULL), KVTIER_OUT_OF_RANGE);
  CHECK_CODE(kvtier_cache_slot_address(cache, 0, 0, 0, NULL, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_slot_address(cache, 3, 1, 1, &addr, NULL));
  CHECK(addr == (void*)(g_kv[1 * kSegs + 1] + 3 * kSegBytes));
  CHECK_CODE(kvtier_cache_check_invariants(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_match_size(NULL, &u), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_lease_size(NULL, &u), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_wait(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_wait_layer(NULL, 0), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_poll(NULL, &done), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_status(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_blocks(NULL, &u, &u), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_layer_ready_event(NULL, 0, &addr), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_cache_close(NULL), KVTIER_INVALID_ARGUMENT);
  kvtier_cache_destroy(NULL); /* no-ops */
  kvtier_lease_destroy(NULL);
  kvtier_match_destroy(NULL);
  kvtier_transfer_destroy(NULL);
  kvtier_hasher_destroy(NULL);
  kvtier_options_init(NULL);

  /* sizes the C++ API rejects */
  CHECK_CODE(kvtier_cache_allocate_device(cache, 0, &lease), KVTIER_INVALID_ARGUMENT);
  CHECK(lease == NULL);
  CHECK_CODE(kvtier_cache_allocate_device(cache, kSlots + 1, &lease), KVTIER_INVALID_ARGUMENT);

  CHECK_OK(kvtier_cache_match(cache, keys, kBlocks, &match));
  CHECK_OK(kvtier_match_size(match, &u));
  CHECK(u == 0);
  CHECK_OK(kvtier_match_tiers(match, NULL, 0));
  CHECK_CODE(kvtier_match_blocks_in(match, (kvtier_tier)7, &u), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_cache_allocate_device(cache, 2, &lease));
  CHECK_OK(kvtier_cache_grow(cache, lease, 2));
  CHECK_OK(kvtier_lease_size(lease, &u));
  CHECK(u == kBlocks);
  CHECK_CODE(kvtier_cache_grow(cache, lease, 0), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_lease_slots(lease, slots, 2), KVTIER_OUT_OF_RANGE);
  CHECK_CODE(kvtier_lease_slots(lease, NULL, 4), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_lease_block_address(lease, kBlocks, 0, 0, &addr, NULL), KVTIER_OUT_OF_RANGE);
  {
    kvtier_block_key five[kBlocks + 1]; /* more keys than the lease has slots */
    memcpy(five, keys, sizeof(keys));
    five[kBlocks] = keys[0];
    CHECK_CODE(kvtier_cache_commit(cache, five, kBlocks + 1, lease), KVTIER_INVALID_ARGUMENT);
  }
  CHECK_CODE(kvtier_cache_commit(cache, NULL, 2, lease), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_match_tiers(match, NULL, 1), KVTIER_INVALID_ARGUMENT);

  /* a lease of another cache */
  CHECK_OK(kvtier_cache_allocate_device(other, 1, &foreign));
  CHECK_CODE(kvtier_cache_commit(cache, keys, 1, foreign), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_load(cache, match, foreign, &xfer), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_release(cache, foreign), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_grow(cache, foreign, 1), KVTIER_FAILED_PRECONDITION);

  CHECK_OK(kvtier_cache_load(cache, match, lease, &xfer));
  CHECK_CODE(kvtier_transfer_wait_layer(xfer, kLayers), KVTIER_OUT_OF_RANGE);
  CHECK_CODE(kvtier_transfer_layer_ready_event(xfer, kLayers, &addr), KVTIER_OUT_OF_RANGE);
  CHECK_CODE(kvtier_transfer_layer_ready_event(xfer, 0, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_transfer_poll(xfer, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_OK(kvtier_transfer_wait(xfer));
  Fill(lease, keys, 0, kBlocks);
  CHECK_OK(kvtier_cache_commit(cache, keys, kBlocks, lease));

  /* Commit of keys another lease already holds on the device: that copy is kept */
  {
    kvtier_lease* second = NULL;
    kvtier_stats st;
    memset(&st, 0, sizeof(st));
    st.struct_size = sizeof(st);
    CHECK_OK(kvtier_cache_allocate_device(cache, 1, &second));
    CHECK_OK(kvtier_cache_commit(cache, keys, 1, second));
    CHECK_OK(kvtier_cache_stats(cache, &st));
    CHECK(st.blocks_commit_shared == 1);
    /* a version-1 caller's struct ends before blocks_commit_shared: nothing is written there */
    memset(&st, 0xEE, sizeof(st));
    st.struct_size = offsetof(kvtier_stats, blocks_commit_shared);
    CHECK_OK(kvtier_cache_stats(cache, &st));
    CHECK(st.blocks_commit_shared == 0xEEEEEEEEEEEEEEEEull);
    CHECK(st.blocks_committed == kBlocks);
    kvtier_lease_destroy(second); /* destroy without release: releases */
  }

  /* Allocation for a match shares its device blocks at once */
  {
    kvtier_match* m = NULL;
    kvtier_lease* third = NULL;
    uint32_t shared = 0;
    CHECK_OK(kvtier_cache_match(cache, keys, kBlocks, &m));
    CHECK_CODE(kvtier_cache_allocate_for_match(cache, NULL, kBlocks, &third),
               KVTIER_INVALID_ARGUMENT);
    CHECK_CODE(kvtier_cache_allocate_for_match(cache, m, kBlocks - 1, &third),
               KVTIER_INVALID_ARGUMENT);
    CHECK_OK(kvtier_cache_allocate_for_match(cache, m, kBlocks, &third));
    CHECK_OK(kvtier_lease_shared(third, &shared));
    CHECK(shared == kBlocks);
    CHECK_CODE(kvtier_lease_shared(third, NULL), KVTIER_INVALID_ARGUMENT);
    kvtier_lease_destroy(third);
    kvtier_match_destroy(m);
  }

  /* use after release */
  CHECK_OK(kvtier_cache_release(cache, lease));
  CHECK_CODE(kvtier_cache_release(cache, lease), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_lease_size(lease, &u), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_lease_slots(lease, slots, kSlots), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_lease_block_address(lease, 0, 0, 0, &addr, NULL), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_commit(cache, keys, 1, lease), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_grow(cache, lease, 1), KVTIER_FAILED_PRECONDITION);
  {
    kvtier_transfer* x2 = (kvtier_transfer*)1;
    CHECK_CODE(kvtier_cache_load(cache, match, lease, &x2), KVTIER_FAILED_PRECONDITION);
    CHECK(x2 == NULL); /* out pointers are cleared on failure */
  }
  kvtier_lease_destroy(lease);

  /* use after close: a live lease, a transfer and a match outlive the close */
  kvtier_transfer_destroy(xfer);
  kvtier_match_destroy(match);
  CHECK_OK(kvtier_cache_match(cache, keys, kBlocks, &match));
  CHECK_OK(kvtier_cache_allocate_device(cache, kBlocks, &live));
  CHECK_OK(kvtier_cache_load(cache, match, live, &xfer));
  CHECK_OK(kvtier_cache_close(cache));
  CHECK_OK(kvtier_cache_close(cache)); /* idempotent */
  {
    kvtier_match* m2 = (kvtier_match*)1;
    CHECK_CODE(kvtier_cache_match(cache, keys, kBlocks, &m2), KVTIER_FAILED_PRECONDITION);
    CHECK(m2 == NULL);
  }
  CHECK_CODE(kvtier_cache_allocate_device(cache, 1, &lease), KVTIER_FAILED_PRECONDITION);
  CHECK(lease == NULL);
  CHECK_CODE(kvtier_cache_stats(cache, &st), KVTIER_INVALID_ARGUMENT); /* struct_size first */
  st.struct_size = sizeof(st);
  CHECK_CODE(kvtier_cache_stats(cache, &st), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_hint(cache, keys, scores, kBlocks), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_block_bytes(cache, &st.bytes_h2d), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_check_invariants(cache), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_wait(xfer), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_wait_layer(xfer, 0), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_poll(xfer, &done), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_status(xfer), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_blocks(xfer, &u, NULL), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_layer_ready_event(xfer, 0, &addr), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_lease_size(live, &u), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_lease_slots(live, slots, kSlots), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_commit(cache, keys, 1, live), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_release(cache, live), KVTIER_FAILED_PRECONDITION);
  kvtier_lease_destroy(live);
  CHECK_OK(kvtier_match_size(match, &u)); /* a match is a value: still readable */
  CHECK_OK(kvtier_match_tiers(match, tiers, kBlocks));
  kvtier_transfer_destroy(xfer);
  kvtier_match_destroy(match);
  kvtier_cache_destroy(cache);

  /* the other cache is unaffected; its lease outlives even the destroy of its cache */
  CHECK_OK(kvtier_lease_size(foreign, &u));
  CHECK(u == 1);
  kvtier_cache_destroy(other);
  CHECK_CODE(kvtier_lease_size(foreign, &u), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_cache_release(NULL, foreign), KVTIER_INVALID_ARGUMENT);
  kvtier_lease_destroy(foreign);
  kvtier_hasher_destroy(hasher);
}

/* ---- connector mode: the engine owns its blocks (g_kv), kvtier stores and loads them ---- */

static unsigned char* EngineBlock(uint32_t block, uint32_t layer, uint32_t seg) {
  return g_kv[layer * kSegs + seg] + (size_t)block * kSegBytes;
}

/* The engine computes `key` into its block `block`. */
static void EngineWrite(uint32_t block, kvtier_block_key key) {
  uint32_t l, s;
  uint64_t i;
  for (l = 0; l < kLayers; ++l)
    for (s = 0; s < kSegs; ++s)
      for (i = 0; i < kSegBytes; ++i) EngineBlock(block, l, s)[i] = Expected(key, l, s, i);
}

/* Mismatched bytes of layer `layer` of engine block `block` against `key`. */
static uint64_t EngineMismatches(uint32_t block, kvtier_block_key key, uint32_t layer) {
  uint64_t bad = 0, i;
  uint32_t s;
  for (s = 0; s < kSegs; ++s)
    for (i = 0; i < kSegBytes; ++i)
      bad += EngineBlock(block, layer, s)[i] != Expected(key, layer, s, i);
  return bad;
}

static kvtier_stats ConnectorStats(kvtier_connector* c) {
  kvtier_stats st;
  memset(&st, 0, sizeof(st));
  st.struct_size = sizeof(st);
  CHECK_OK(kvtier_connector_stats(c, &st));
  return st;
}

/* Store from engine blocks, load byte-exact into other blocks; layer-wise stores; take_finished
 * across calls when the caller's array is too small. */
static void TestConnectorLifecycle(void) {
  kvtier_options o = BaseOptions();
  kvtier_connector* c = NULL;
  kvtier_hasher* hasher = NULL;
  kvtier_block_key keys[kBlocks], keys2[kBlocks], keys3[kBlocks];
  const uint32_t src[kBlocks] = {0, 1, 2, 3}, src2[kBlocks] = {4, 5, 6, 7};
  const uint32_t dst[3] = {9, 3, 12};
  kvtier_store *store = NULL, *layered = NULL, *abandoned = NULL;
  kvtier_transfer* xfer = NULL;
  kvtier_tier tiers[kBlocks];
  kvtier_lookup_result r;
  kvtier_finished fin[2];
  kvtier_stats st;
  uint32_t blocks = 0, unstored = 0, layers = 0, l, b;
  uint64_t block_bytes = 0, stored = 0;
  size_t n = 0;
  bool done = false;

  CHECK_OK(kvtier_connector_create(&o, &c));
  CHECK_OK(kvtier_connector_block_bytes(c, &block_bytes));
  CHECK(block_bytes == (uint64_t)kLayers * kSegs * kSegBytes);
  CHECK_OK(kvtier_hasher_create("c-test-connector", NULL, NULL, &hasher));
  Prompt(hasher, 1, keys);
  Prompt(hasher, 2, keys2);
  Prompt(hasher, 3, keys3);

  /* store: the engine computed keys into blocks 0..3 */
  for (b = 0; b < kBlocks; ++b) EngineWrite(src[b], keys[b]);
  CHECK_OK(kvtier_connector_store(c, keys, kBlocks, 0, src, kBlocks, NULL, 11, &store));
  CHECK_OK(kvtier_store_wait(store));
  CHECK_OK(kvtier_store_poll(store, &done));
  CHECK(done);
  CHECK_OK(kvtier_store_status(store));
  CHECK_OK(kvtier_store_blocks(store, &blocks, &unstored));
  CHECK(blocks == kBlocks && unstored == 0);
  CHECK_OK(kvtier_store_layers_saved(store, &layers));
  CHECK(layers == kLayers);
  CHECK_OK(kvtier_store_save_all(store, NULL)); /* nothing left to save: OK */
  kvtier_store_destroy(store);
  st = ConnectorStats(c);
  CHECK(st.blocks_stored == kBlocks && st.blocks_store_skipped == 0);
  CHECK(st.device.used_blocks == 0); /* the engine's device is not a kvtier tier */

  /* lookup: all 4 on the host; past the engine's first hit, 3 */
  memset(&r, 0, sizeof(r));
  r.tiers = tiers;
  r.tiers_capacity = kBlocks;
  CHECK_OK(kvtier_connector_lookup(c, keys, kBlocks, 0, true, true, &r));
  CHECK(r.blocks == kBlocks && !r.pending);
  for (b = 0; b < kBlocks; ++b) CHECK(tiers[b] == KVTIER_TIER_HOST);
  r.tiers = NULL;
  r.tiers_capacity = 0;
  CHECK_OK(kvtier_connector_lookup(c, keys, kBlocks, 1, false, false, &r));
  CHECK(r.blocks == 3);

  /* load keys [1, 4) (the engine holds keys[0]) into scribbled blocks 9, 3, 12: byte-exact */
  memset(g_kv, 0xEE, sizeof(g_kv));
  CHECK_OK(kvtier_connector_load(c, keys, kBlocks, 1, dst, 3, 12, &xfer));
  CHECK_OK(kvtier_transfer_blocks(xfer, &blocks, NULL));
  CHECK(blocks == 3);
  for (l = 0; l < kLayers; ++l) {
    CHECK_OK(kvtier_transfer_wait_layer(xfer, l));
    for (b = 0; b < 3; ++b) CHECK(EngineMismatches(dst[b], keys[1 + b], l) == 0);
  }
  CHECK_OK(kvtier_transfer_wait(xfer));
  CHECK_OK(kvtier_transfer_status(xfer));
  kvtier_transfer_destroy(xfer);

  /* layer-wise: layers in order, each once; wait refuses while layers are unsaved */
  for (b = 0; b < kBlocks; ++b) EngineWrite(src2[b], keys2[b]);
  CHECK_OK(kvtier_connector_begin_store(c, keys2, kBlocks, 0, src2, kBlocks, 13, &layered));
  CHECK_CODE(kvtier_store_save_layer(layered, 1, NULL), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_wait(layered), KVTIER_FAILED_PRECONDITION);
  for (l = 0; l < kLayers; ++l) {
    CHECK_OK(kvtier_store_save_layer(layered, l, NULL));
    CHECK_OK(kvtier_store_layers_saved(layered, &layers));
    CHECK(layers == l + 1);
  }
  CHECK_CODE(kvtier_store_save_layer(layered, kLayers, NULL), KVTIER_OUT_OF_RANGE);
  CHECK_OK(kvtier_store_wait(layered));
  kvtier_store_destroy(layered);

  /* destroyed with layers unsaved: abandoned, nothing stored, reported CANCELLED */
  CHECK_OK(kvtier_connector_begin_store(c, keys3, 2, 0, src, 2, 14, &abandoned));
  CHECK_OK(kvtier_store_save_layer(abandoned, 0, NULL));
  kvtier_store_destroy(abandoned);
  CHECK_OK(kvtier_connector_lookup(c, keys3, 2, 0, false, true, &r));
  CHECK(r.blocks == 0);

  /* take_finished: a call with no room keeps them all; then 2 + 2 across calls, in order, each
     once, none lost */
  CHECK_OK(kvtier_connector_take_finished(c, NULL, 0, &n));
  CHECK(n == 0);
  CHECK_OK(kvtier_connector_take_finished(c, fin, 2, &n));
  CHECK(n == 2);
  CHECK(fin[0].request_id == 11 && fin[0].kind == KVTIER_FINISHED_STORE);
  CHECK(fin[0].status == KVTIER_OK && fin[0].blocks == kBlocks);
  CHECK(fin[1].request_id == 12 && fin[1].kind == KVTIER_FINISHED_LOAD);
  CHECK(fin[1].status == KVTIER_OK && fin[1].blocks == 3 && fin[1].blocks_loaded == 3);
  CHECK_OK(kvtier_connector_take_finished(c, fin, 2, &n));
  CHECK(n == 2);
  CHECK(fin[0].request_id == 13 && fin[0].kind == KVTIER_FINISHED_STORE &&
        fin[0].status == KVTIER_OK);
  CHECK(fin[1].request_id == 14 && fin[1].status == KVTIER_CANCELLED && fin[1].blocks_loaded == 0);
  CHECK_OK(kvtier_connector_take_finished(c, fin, 2, &n));
  CHECK(n == 0);

  /* storing the same keys again copies nothing */
  st = ConnectorStats(c);
  CHECK(st.blocks_store_skipped == 0);
  stored = st.blocks_stored;
  CHECK_OK(kvtier_connector_store(c, keys, kBlocks, 0, src, kBlocks, NULL, 0, &store));
  CHECK_OK(kvtier_store_wait(store));
  CHECK_OK(kvtier_store_blocks(store, &blocks, NULL));
  CHECK(blocks == 0);
  kvtier_store_destroy(store);
  st = ConnectorStats(c);
  CHECK(st.blocks_stored == stored && st.blocks_store_skipped == kBlocks);
  /* a version-2 caller's struct ends before blocks_stored: nothing is written there */
  memset(&st, 0xEE, sizeof(st));
  st.struct_size = KVTIER_STATS_SIZE_V2;
  CHECK_OK(kvtier_connector_stats(c, &st));
  CHECK(st.blocks_commit_shared == 0 && st.blocks_stored == 0xEEEEEEEEEEEEEEEEull);
  CHECK(st.blocks_store_skipped == 0xEEEEEEEEEEEEEEEEull);

  CHECK_OK(kvtier_connector_hint(c, keys, (const double[kBlocks]){1, 2, 3, 4}, kBlocks));
  CHECK_OK(kvtier_connector_check_invariants(c));
  CHECK_OK(kvtier_connector_close(c));
  kvtier_connector_destroy(c);
  kvtier_hasher_destroy(hasher);
}

/* Every misuse: an error code, nothing changed, the connector usable after; after close,
 * FAILED_PRECONDITION through the connector, its transfers and its stores. */
static void TestConnectorBadCalls(void) {
  kvtier_options o = BaseOptions();
  kvtier_connector* c = (kvtier_connector*)1;
  kvtier_hasher* hasher = NULL;
  kvtier_block_key keys[kBlocks], other[kBlocks], root[1];
  const uint32_t src[kBlocks] = {0, 1, 2, 3};
  kvtier_store *store = (kvtier_store*)1, *busy = NULL, *live = NULL;
  kvtier_transfer *xfer = (kvtier_transfer*)1, *live_xfer = NULL;
  kvtier_tier tiers[kBlocks];
  kvtier_lookup_result r;
  kvtier_finished fin[4];
  kvtier_stats before, after;
  uint32_t u = 0, b;
  size_t n = 0;
  bool done = false;
  int not_an_event = 0;

  /* create: as the cache's options, plus a device capacity or no host tier refused */
  CHECK_CODE(kvtier_connector_create(NULL, &c), KVTIER_INVALID_ARGUMENT);
  CHECK(c == NULL);
  CHECK_CODE(kvtier_connector_create(&o, NULL), KVTIER_INVALID_ARGUMENT);
  o.device_capacity_slots = 4;
  CHECK_CODE(kvtier_connector_create(&o, &c), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.host_capacity_bytes = 0;
  CHECK_CODE(kvtier_connector_create(&o, &c), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  o.struct_size = 0;
  CHECK_CODE(kvtier_connector_create(&o, &c), KVTIER_INVALID_ARGUMENT);
  o = BaseOptions();
  CHECK_OK(kvtier_connector_create(&o, &c));

  CHECK_OK(kvtier_hasher_create("c-test-connector-bad", NULL, NULL, &hasher));
  Prompt(hasher, 1, keys);
  Prompt(hasher, 2, other);
  memset(root, 0, sizeof(root));
  for (b = 0; b < kBlocks; ++b) EngineWrite(src[b], keys[b]);
  CHECK_OK(kvtier_connector_store(c, keys, kBlocks, 0, src, kBlocks, NULL, 0, &store));
  CHECK_OK(kvtier_store_wait(store));
  kvtier_store_destroy(store);
  before = ConnectorStats(c);

  /* NULL handles and outputs */
  memset(&r, 0, sizeof(r));
  CHECK_CODE(kvtier_connector_lookup(NULL, keys, kBlocks, 0, true, true, &r),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_lookup(c, keys, kBlocks, 0, true, true, NULL),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_lookup(c, NULL, kBlocks, 0, true, true, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_load(NULL, keys, kBlocks, 0, src, kBlocks, 0, &xfer),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, src, kBlocks, 0, NULL),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, NULL, kBlocks, 0, &xfer),
             KVTIER_INVALID_ARGUMENT);
  CHECK(xfer == NULL);
  CHECK_CODE(kvtier_connector_store(c, keys, kBlocks, 0, NULL, kBlocks, NULL, 0, &store),
             KVTIER_INVALID_ARGUMENT);
  CHECK(store == NULL);
  CHECK_CODE(kvtier_connector_begin_store(NULL, keys, kBlocks, 0, src, kBlocks, 0, &store),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_take_finished(NULL, fin, 4, &n), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_take_finished(c, fin, 4, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_take_finished(c, NULL, 4, &n), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_hint(c, keys, NULL, kBlocks), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_stats(NULL, &before), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_stats(c, NULL), KVTIER_INVALID_ARGUMENT);
  after.struct_size = KVTIER_STATS_SIZE_V1 - 8;
  CHECK_CODE(kvtier_connector_stats(c, &after), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_check_invariants(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_block_bytes(c, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_close(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_save_layer(NULL, 0, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_save_all(NULL, NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_wait(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_poll(NULL, &done), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_status(NULL), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_blocks(NULL, &u, &u), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_store_layers_saved(NULL, &u), KVTIER_INVALID_ARGUMENT);
  kvtier_store_destroy(NULL);
  kvtier_connector_destroy(NULL);

  /* bad values: the C++ API's codes */
  r.tiers = tiers;
  r.tiers_capacity = kBlocks - 2; /* fewer than num_keys - first: refused before looking */
  CHECK_CODE(kvtier_connector_lookup(c, keys, kBlocks, 1, true, true, &r), KVTIER_OUT_OF_RANGE);
  r.tiers = NULL;
  CHECK_CODE(kvtier_connector_lookup(c, keys, kBlocks, 1, true, true, &r), KVTIER_INVALID_ARGUMENT);
  r.tiers_capacity = 0;
  CHECK_CODE(kvtier_connector_lookup(c, keys, kBlocks, kBlocks + 1, true, true, &r),
             KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_lookup(c, root, 1, 0, true, true, &r), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, src, kBlocks - 1, 0, &xfer),
             KVTIER_INVALID_ARGUMENT); /* one dst block short */
  {
    const uint32_t past[kBlocks] = {4, 5, 6, kSlots}, twice[kBlocks] = {4, 5, 5, 6};
    CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, past, kBlocks, 0, &xfer),
               KVTIER_INVALID_ARGUMENT);
    CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, twice, kBlocks, 0, &xfer),
               KVTIER_INVALID_ARGUMENT);
    CHECK_CODE(kvtier_connector_store(c, other, kBlocks, 0, twice, kBlocks, NULL, 0, &store),
               KVTIER_INVALID_ARGUMENT);
  }
  /* a ready event on the emulated device, which has none */
  CHECK_CODE(kvtier_connector_store(c, other, kBlocks, 0, src, kBlocks, &not_an_event, 0, &store),
             KVTIER_INVALID_ARGUMENT);
  after = ConnectorStats(c);
  CHECK(after.match_calls == before.match_calls); /* the refused lookups looked at nothing */
  CHECK(after.blocks_stored == before.blocks_stored);
  CHECK(after.host.used_blocks == before.host.used_blocks);

  /* a block a store in flight reads is no load target until the store ends */
  {
    const uint32_t srcb[2] = {8, 9}, dst[kBlocks] = {10, 9, 11, 12};
    EngineWrite(8, other[0]);
    EngineWrite(9, other[1]);
    CHECK_OK(kvtier_connector_begin_store(c, other, 2, 0, srcb, 2, 0, &busy));
    CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, dst, kBlocks, 0, &xfer),
               KVTIER_FAILED_PRECONDITION);
    CHECK_OK(kvtier_connector_check_invariants(c));
    CHECK_OK(kvtier_store_save_all(busy, NULL));
    CHECK_OK(kvtier_store_wait(busy));
    kvtier_store_destroy(busy);
    CHECK_OK(kvtier_connector_load(c, keys, kBlocks, 0, dst, kBlocks, 0, &xfer));
    CHECK_OK(kvtier_transfer_wait(xfer));
    for (b = 0; b < kBlocks; ++b) CHECK(EngineMismatches(dst[b], keys[b], kLayers - 1) == 0);
    kvtier_transfer_destroy(xfer);
  }

  /* after close: the connector, a live transfer and a live store all answer FAILED_PRECONDITION */
  CHECK_OK(kvtier_connector_load(c, keys, kBlocks, 0, (const uint32_t[kBlocks]){12, 13, 14, 15},
                                 kBlocks, 21, &live_xfer));
  CHECK_OK(kvtier_connector_begin_store(c, other, kBlocks, 0, src, kBlocks, 22, &live));
  CHECK_OK(kvtier_connector_close(c)); /* abandons `live` (layers unsaved), waits for the load */
  CHECK_OK(kvtier_connector_close(c)); /* idempotent */
  r.tiers = NULL;
  r.tiers_capacity = 0;
  CHECK_CODE(kvtier_connector_lookup(c, keys, kBlocks, 0, true, true, &r),
             KVTIER_FAILED_PRECONDITION);
  CHECK(strstr(kvtier_last_error(), "connector is closed") != NULL);
  CHECK_CODE(kvtier_connector_load(c, keys, kBlocks, 0, src, kBlocks, 0, &xfer),
             KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_store(c, keys, kBlocks, 0, src, kBlocks, NULL, 0, &store),
             KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_begin_store(c, keys, kBlocks, 0, src, kBlocks, 0, &store),
             KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_take_finished(c, fin, 4, &n), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_hint(c, keys, (const double[kBlocks]){0}, kBlocks),
             KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_stats(c, &after), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_check_invariants(c), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_connector_block_bytes(c, &before.match_calls), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_wait(live_xfer), KVTIER_FAILED_PRECONDITION);
  CHECK(strstr(kvtier_last_error(), "connector is closed") != NULL);
  CHECK_CODE(kvtier_transfer_wait_layer(live_xfer, 0), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_transfer_poll(live_xfer, &done), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_save_layer(live, 0, NULL), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_save_all(live, NULL), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_wait(live), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_poll(live, &done), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_status(live), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_blocks(live, &u, NULL), KVTIER_FAILED_PRECONDITION);
  CHECK_CODE(kvtier_store_layers_saved(live, &u), KVTIER_FAILED_PRECONDITION);
  kvtier_connector_destroy(c); /* the handles outlive it, and are still destroyed */
  kvtier_store_destroy(live);
  kvtier_transfer_destroy(live_xfer);
  kvtier_hasher_destroy(hasher);
}

/* ---- concurrency: workers run requests while the main thread closes the cache ---- */

typedef struct Worker {
  kvtier_cache* cache;
  kvtier_hasher* hasher;
  int id;
  int completed;   /* requests that committed or found their blocks */
  int after_close; /* calls answered FAILED_PRECONDITION because of the close */
  int unexpected;  /* any other failure */
} Worker;

/* OK or an outcome a racing engine must expect; FAILED_PRECONDITION counts as "closed". */
static int Expected2(Worker* w, kvtier_status s) {
  if (s == KVTIER_OK || s == KVTIER_ALREADY_EXISTS || s == KVTIER_RESOURCE_EXHAUSTED) return 1;
  if (s == KVTIER_FAILED_PRECONDITION) {
    w->after_close++;
    return 0;
  }
  fprintf(stderr, "worker %d: %s: %s\n", w->id, kvtier_status_name(s), kvtier_last_error());
  w->unexpected++;
  return 0;
}

/* Fill() that returns the first failure (the cache may close meanwhile) instead of exiting. */
static kvtier_status FillSoft(kvtier_lease* lease, const kvtier_block_key* keys, uint32_t from,
                              uint32_t to) {
  uint32_t b, l, s;
  uint64_t i;
  for (b = from; b < to; ++b) {
    for (l = 0; l < kLayers; ++l) {
      for (s = 0; s < kSegs; ++s) {
        void* addr = NULL;
        uint64_t bytes = 0;
        kvtier_status st = kvtier_lease_block_address(lease, b, l, s, &addr, &bytes);
        if (st != KVTIER_OK) return st;
        for (i = 0; i < bytes; ++i) ((unsigned char*)addr)[i] = Expected(keys[b], l, s, i);
      }
    }
  }
  return KVTIER_OK;
}

static void* WorkerMain(void* arg) {
  Worker* w = (Worker*)arg;
  int i;
  for (i = 0; i < 100000 && w->after_close == 0 && w->unexpected == 0; ++i) {
    int32_t tokens[kBlocks * kTpb];
    kvtier_block_key keys[kBlocks];
    size_t n = 0, t;
    kvtier_match* match = NULL;
    kvtier_lease* lease = NULL;
    kvtier_transfer* xfer = NULL;
    /* Blocks 0-1 shared by every worker, 2-3 by this worker's request family. */
    for (t = 0; t < kBlocks * kTpb; ++t) {
      tokens[t] = t < 2 * kTpb ? (int32_t)t : w->id * 1000000 + (i % 5) * 1000 + (int32_t)t;
    }
    if (kvtier_hasher_chain_tokens(w->hasher, tokens, kBlocks * kTpb, kTpb, keys, kBlocks, &n) !=
        KVTIER_OK) {
      w->unexpected++;
      break;
    }
    if (Expected2(w, kvtier_cache_match(w->cache, keys, n, &match)) &&
        Expected2(w, kvtier_cache_allocate_device(w->cache, (uint32_t)n, &lease)) && lease &&
        Expected2(w, kvtier_cache_load(w->cache, match, lease, &xfer))) {
      kvtier_status s = kvtier_transfer_wait(xfer);
      uint32_t loaded = 0;
      if (Expected2(w, s) && Expected2(w, kvtier_transfer_blocks(xfer, &loaded, NULL))) {
        if (Expected2(w, FillSoft(lease, keys, loaded, (uint32_t)n)) &&
            Expected2(w, kvtier_cache_commit(w->cache, keys, n, lease))) {
          w->completed++;
        }
      }
      Expected2(w, kvtier_cache_release(w->cache, lease));
    }
    kvtier_transfer_destroy(xfer);
    kvtier_lease_destroy(lease);
    kvtier_match_destroy(match);
  }
  return NULL;
}

static void TestConcurrentClose(void) {
  enum { kWorkers = 4 };
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = NULL;
  kvtier_hasher* hasher = NULL;
  pthread_t threads[kWorkers];
  Worker workers[kWorkers];
  int i, done = 0;
  kvtier_stats st;

  /* 4 workers x 4-block leases fit the 16 device slots; RESOURCE_EXHAUSTED is tolerated anyway. */
  CHECK_OK(kvtier_cache_create(&o, &cache));
  CHECK_OK(kvtier_hasher_create("c-test-threads", NULL, NULL, &hasher));
  for (i = 0; i < kWorkers; ++i) {
    Worker init = {cache, hasher, i + 1, 0, 0, 0};
    workers[i] = init;
    CHECK(pthread_create(&threads[i], NULL, WorkerMain, &workers[i]) == 0);
  }
  /* Let them run until each completed a few requests, then close under them. */
  while (!done) {
    memset(&st, 0, sizeof(st));
    st.struct_size = sizeof(st);
    CHECK_OK(kvtier_cache_stats(cache, &st));
    done = st.match_calls >= 200;
  }
  CHECK_OK(kvtier_cache_close(cache));
  for (i = 0; i < kWorkers; ++i) {
    CHECK(pthread_join(threads[i], NULL) == 0);
    CHECK(workers[i].unexpected == 0);
    CHECK(workers[i].after_close > 0); /* each saw the close, none crashed */
    done += workers[i].completed;
  }
  printf("c_api_test: %d requests by %d threads before the close\n", done - 1, kWorkers);
  kvtier_cache_destroy(cache);
  kvtier_hasher_destroy(hasher);
}

/* Tenant shares and wipe_on_free through kvtier_options_set; a lease names its tenant. */
static void TestTenants(void) {
  kvtier_options o = BaseOptions();
  kvtier_cache* cache = NULL;
  kvtier_lease* lease = NULL;

  CHECK_OK(kvtier_options_set(&o, "host.tenant_shares", "a=0.7,b=0.4"));
  CHECK_CODE(kvtier_cache_create(&o, &cache), KVTIER_INVALID_ARGUMENT); /* sum > 1 */
  CHECK_OK(kvtier_options_set(&o, "host.tenant_shares", "a=0.5,b=0.5"));
  CHECK_OK(kvtier_options_set(&o, "host.wipe_on_free", "true"));
  CHECK_OK(kvtier_cache_create(&o, &cache));
  CHECK_OK(kvtier_cache_allocate_device(cache, 1, &lease));
  CHECK_OK(kvtier_lease_set_tenant(cache, lease, "a"));
  CHECK_OK(kvtier_lease_set_tenant(cache, lease, NULL)); /* the default tenant */
  CHECK_CODE(kvtier_lease_set_tenant(cache, lease, "c"), KVTIER_INVALID_ARGUMENT);
  CHECK_CODE(kvtier_lease_set_tenant(cache, NULL, "a"), KVTIER_INVALID_ARGUMENT);
  kvtier_lease_destroy(lease);
  CHECK_OK(kvtier_cache_close(cache));
  kvtier_cache_destroy(cache);
  kvtier_options_free_values(&o);
}

int main(int argc, char** argv) {
  const char* scratch = argc > 1 ? argv[1] : ".";
  TestBadOptions();
  TestOptionValues(scratch);
  TestLifecycle();
  TestEvents();
  TestManagement();
  TestDiskWarmRestart(scratch);
  TestBadCalls();
  TestConnectorLifecycle();
  TestConnectorBadCalls();
  TestConcurrentClose();
  TestTenants();
  printf("c_api_test: all checks passed\n");
  return 0;
}
