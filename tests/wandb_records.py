"""Read a W&B offline run file (`run-*.wandb`) with wandb's own protobuf records.

The file is a sequence of 32 KiB blocks after a 7-byte header (':W&B', magic, version);
each record chunk has a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
4 last), the LevelDB log layout wandb writes.
"""

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, chunk, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if (kind == 0 and length == 0) or pos + length > len(data):  # end, or still writing
            break
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out
