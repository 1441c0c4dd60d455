"""Print the history rows of a W&B offline run as JSON lines, read with wandb's own record schema.

usage: python read_wandb_history.py RUN_DIR

The run's transaction log (run-ID.wandb) is a LevelDB-style log: a 7-byte file header
(":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte header
(CRC-32 of type + data, uint16 length, uint8 type: 1 full, 2 first, 3 middle, 4 last).
Each assembled record is one wandb.proto.wandb_internal_pb2.Record. wandb 0.30 reads these
files in its Go core only, so the framing is read here and every record is checked against
its CRC and decoded with wandb's own protobuf classes.
"""

import glob
import json
import os
import struct
import sys
import zlib

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        body = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF == checksum, "bad CRC at %d" % pos
        pos += HEADER + length
        if kind == 1:
            yield body
        elif kind == 2:
            pending = body
        elif kind == 3:
            pending += body
        elif kind == 4:
            yield pending + body
            pending = b""


def main(run_dir):
    (log,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    for raw in records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        if record.history.HasField("step"):
            row["_step"] = record.history.step.num
        print(json.dumps(row, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
