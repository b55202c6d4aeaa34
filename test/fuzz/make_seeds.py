#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (test/fuzz/corpus/<target>/seed-*): valid inputs of
each parser, in the encodings the targets document. Run from anywhere; it rewrites only seed-*
files (inputs that found defects are named regression-* and kept). Needs libxxhash.so.0."""
import ctypes
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
_xxh = ctypes.CDLL("libxxhash.so.0")
_xxh.XXH3_64bits.restype = ctypes.c_uint64
_xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def xxh3(b):
    return _xxh.XXH3_64bits(b, len(b))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


BLOCK_HEADER_VERSION = 2  # kBlockHeaderVersion, also the manifest's version


def block_header(header_bytes, key, parent, fingerprint, payload):
    fields = (b"KVTIERB1" + struct.pack("<II", BLOCK_HEADER_VERSION, header_bytes) +
              struct.pack("<QQQQ", *key, *parent) +
              struct.pack("<QQQQ", fingerprint, len(payload), xxh3(payload), 7))
    h = fields + struct.pack("<Q", xxh3(fields))
    return h + b"\0" * (header_bytes - len(h))


# block_header: mode 0 = a header as found; mode 1 = fields, then a payload.
write("block_header", "trailer-80", b"\0" + block_header(80, (1, 2), (0, 0), 0xF00D, b""))
write("block_header", "remote-128",
      b"\0" + block_header(128, (0xDEADBEEF, 0xC0FFEE), (3, 4), 0x1234, b"payload"))
write("block_header", "fields-and-payload",
      b"\1" + struct.pack("<QQQQQQIHB", 1, 2, 3, 4, 0xF00D, 9, 48, 5, 0x80) + b"\0" +
      b"some payload bytes")

# disk_manifest: kGeometry of disk_manifest_fuzz.cc.
FP, SLOT_BYTES, SLOTS, FILES = 0x6B76746965720001, 8192, 16, 2


def manifest(entries, fp=FP, slot_bytes=SLOT_BYTES, slots=SLOTS, files=FILES, seq=41):
    b = b"KVTIERM1" + struct.pack("<IQQIIQQ", BLOCK_HEADER_VERSION, fp, slot_bytes, slots, files,
                                  len(entries), seq)
    for slot, key, parent in entries:
        b += struct.pack("<IQQQQ", slot, *key, *parent)
    return b + struct.pack("<Q", xxh3(b))


write("disk_manifest", "empty", b"\0" + manifest([]))
write("disk_manifest", "three-blocks",
      b"\0" + manifest([(0, (1, 1), (0, 0)), (5, (2, 2), (1, 1)), (15, (3, 3), (2, 2))]))
write("disk_manifest", "own-geometry",
      b"\2" + manifest([(99, (7, 7), (0, 0)), (3, (8, 8), (7, 7))], fp=1, slot_bytes=4096 * 3,
                       slots=100, files=1))

# disk_open: mode, meta size u16, manifest size u16, meta, manifest, trailers.
def disk_open(mode, meta=b"", manifest=b"", trailers=b""):
    return struct.pack("<BHH", mode, len(meta), len(manifest)) + meta + manifest + trailers


def entry(slot, key, parent):  # mode bit 1: slot u8, key, parent, 3 bytes of padding
    return struct.pack("<BQQQQ", slot, *key, *parent) + b"\0" * 3


def trailer(key, parent, seq, slot, flags=0):  # mode bit 3
    return struct.pack("<QQQQIBB", *key, *parent, seq, slot, flags) + b"\0" * 6


write("disk_open", "manifest",
      disk_open(1 | 2 | 8, manifest=entry(0, (1, 1), (0, 0)) + entry(3, (2, 2), (1, 1)),
                trailers=trailer((1, 1), (0, 0), 1, 0) + trailer((2, 2), (1, 1), 2, 3)))
write("disk_open", "scan",
      disk_open(1 | 4 | 8, trailers=trailer((1, 1), (0, 0), 1, 0) + trailer((2, 2), (1, 1), 2, 3) +
                trailer((1, 1), (0, 0), 5, 6) + trailer((3, 3), (2, 2), 3, 7, flags=1) +
                trailer((4, 4), (2, 2), 4, 5, flags=2)))
write("disk_open", "other-meta-reset",
      disk_open(16 | 4, meta=b"kvtier-disk v2 fingerprint=1 block_bytes=4096 slot_bytes=8192 "
                b"slots=8 files=1\n"))
write("disk_open", "raw",
      disk_open(1, manifest=b"KVTIERM1" + b"\1" * 60,
                trailers=block_header(80, (9, 9), (0, 0), 0x6B76746965720002, b"") * 2))

# disk_journal: mode, then one byte per value (test/fuzz/disk_journal_fuzz.cc): epoch, generation;
# the checkpoint's entry count, entries (key, slot) and max sequence; each journal's record count
# and records (kind, slot, key, sequence; kind 4 is followed by the record's 64 raw bytes).
def journal(records):
    return bytes([len(records)]) + b"".join(bytes(r) for r in records)


write("disk_journal", "replay",
      bytes([0, 1, 2, 3, 1, 0, 2, 3, 3, 5, 9]) +
      journal([(0, 4, 4, 10), (1, 0, 0, 0), (0, 5, 2, 11)]) +  # put, drop, put (key of slot 3)
      journal([(0, 6, 6, 12)]))
write("disk_journal", "stops-at-wrong-index",
      bytes([0, 2, 0, 1, 1, 0, 7]) + journal([(0, 1, 1, 8), (3, 2, 2, 9), (0, 3, 3, 10)]) +
      journal([(0, 4, 4, 11)]))
write("disk_journal", "torn-tail", bytes([16, 1, 1, 0, 0]) + journal([(0, 1, 1, 1), (0, 2, 2, 2)]) +
      bytes([3]) + journal([(0, 3, 3, 3)]) + bytes([5]))
write("disk_journal", "raw-journal", bytes([8, 1, 0, 1, 1, 0, 4, 2]) + b"KVTIER" * 2)


# resp_reader: mode, head size, body size, then the bytes.
def resp(mode, head, body, text):
    return bytes([mode, head, body]) + text.encode()


SLOTS_REPLY = ("*2\r\n"
               "*3\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$3\r\nid1\r\n"
               "*4\r\n:8192\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n*2\r\n$1\r\n?\r\n:7004\r\n")
write("resp_reader", "simple", resp(0, 0, 0, "+OK\r\n:1\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n"))
write("resp_reader", "get-into", resp(1, 4, 8, "$10\r\n0123456789\r\n$-1\r\n$0\r\n\r\n"
                                      "-MOVED 3999 127.0.0.1:6381\r\n"))
write("resp_reader", "cluster-slots", resp(0, 0, 0, SLOTS_REPLY))
write("resp_reader", "cluster-slots-bytewise", resp(2, 0, 0, SLOTS_REPLY))
write("resp_reader", "errors", resp(4, 0, 0, "-ASK 12 10.0.0.1:7002\r\n-CLUSTERDOWN down\r\n"
                                   "-TRYAGAIN\r\n-ERR unknown\r\n*3\r\n$3\r\nSET\r\n:0\r\n*0\r\n"))
write("resp_reader", "small-limit", resp(8 | 6 | 1, 16, 16, "$20\r\nabcdefghijklmnopqrst\r\n"))

# trace: Mooncake JSON lines.
write("trace", "mooncake",
      '{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, 13]}\n'
      '{"timestamp": 27482, "input_length": 7319, "output_length": 490, '
      '"hash_ids": [0, 1, 2, 3, 4]}\n'
      '\n'
      '{"timestamp": 30535.5, "input_length": 7234, "output_length": 794, "hash_ids": [5, 6]}\n')
write("trace", "extra-keys",
      '{"hash_ids": [], "input_length": 0, "model": "m", "meta": {"a": [1, 2.5e3, true, null], '
      '"b": "x\\"y"}}\n'
      '{"input_length": 12, "hash_ids": [18446744073709551615, 7]}\r\n')

# options: PATH=VALUE lines.
write("options", "tiers",
      "host.capacity_bytes=1048576\nhost.policy=s3fifo\n"
      "host.policy_params=small_ratio=0.2,ghost_ratio=1.5,threshold=3\n"
      "device.policy=streaming\ndevice.policy_params=sinks=4,window=64\n"
      "disk.capacity_bytes=8388608\ndisk.directory=/tmp/kv\ndisk.files=4\ndisk.queue_depth=32\n"
      "disk.policy=kv_adaptive\ndisk.policy_params=ghost_factor=8\n"
      "disk.reset_on_mismatch=true\ndisk.allow_buffered=yes\ndisk.flush_on_close=0\n")
write("options", "remote-and-cuda",
      "backend=emulated\ncuda.device=-1\ncuda.copy_method=batch_memcpy\n"
      "host.capacity_bytes=65536\nremote.nodes=127.0.0.1:7000,127.0.0.1:7001\nremote.scope=s1\n"
      "remote.publish=write-back\nremote.ttl_seconds=60\nremote.match_budget_us=500\n"
      "remote.timeout_ms=100\nremote.connect_timeout_ms=50\nremote.password=\n"
      "remote.threads=2\ndemote_on_evict=false\nhost_write_through=true\n")
write("options", "policies",
      "device.policy=lfu\ndevice.policy_params=aging=on\nhost.policy=priority\n"
      "host.policy_params=default=3\ndisk.policy=h2o\ndisk.policy_params=accumulate=false\n")
write("options", "policies-2",
      "device.policy=arc\nhost.policy=sieve\ndisk.policy=prefix_aware\n"
      "device.capacity_slots=32\n")

# cache_sequence: a configuration byte (policy index, write-through, loads in flight), then one
# byte per choice of the model. Bytes from a seeded generator: long mixed runs of every call.
import random  # noqa: E402

for n, config in enumerate([0x00, 0x01, 0x0a, 0x13, 0x1c, 0x05, 0x16, 0x1f]):
    rng = random.Random(1700 + n)
    write("cache_sequence", f"mixed-{n}", bytes([config]) + rng.randbytes(1500))
