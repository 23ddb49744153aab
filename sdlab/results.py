"""Result files of sweep points: keys, atomic writes, lookup by key, and per-point claims.

A point's key hashes the resolved config fields that define its numbers. A finished point
has a `result.json`, written through a temp file and a rename, so a killed job leaves none.
While a job computes a point it holds a claim (`<root>/.claims/<key>`, created exclusively);
concurrent workers of the same sweep skip a claimed point, and a claim whose process is
gone (killed) is taken over.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Config keys that define a point's numbers; everything else (logger, batch size, paths,
# the nfe budget once turned into steps) cannot change a result, so it stays out of the key.
KEY_FIELDS = ("model", "sampler", "schedule", "guidance", "metrics", "prompts", "steps",
              "n_images", "seed", "negative_prompt")


def point_key(cfg: DictConfig) -> str:
    """Hash of the resolved config fields that define a point's numbers."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    defining = {k: resolved.get(k) for k in KEY_FIELDS}
    if "scheduler" in (defining["sampler"] or {}):
        defining["schedule"] = None  # a diffusers scheduler brings its own timesteps
    blob = json.dumps(defining, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_result(root: str | Path, key: str) -> Path | None:
    """An ok result.json with this key anywhere under root, if one exists."""
    root = Path(root)
    if not root.is_dir():
        return None
    for path in sorted(root.rglob("result.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("key") == key and result.get("status") == "ok":
            return path
    return None


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temp file and rename, so a reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claimed(RuntimeError):
    """Another live job is computing this point right now."""


@contextmanager
def claim(root: str | Path, key: str) -> Iterator[Path]:
    """Hold the exclusive claim on point `key` while the body runs."""
    path = Path(root) / ".claims" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):  # being written, or torn by a kill
                owner = {"pid": "?", "host": "?"}
                if time.time() - path.stat().st_mtime > 60:
                    owner["host"] = me["host"]  # torn long ago: treat as dead
            live = owner["host"] != me["host"] or (owner["pid"] != "?" and _alive(owner["pid"]))
            if live:
                raise Claimed(f"point {key} is being computed by pid {owner['pid']} on "
                              f"{owner['host']}; if that job is dead, delete {path}") from None
            path.unlink(missing_ok=True)  # the claimant was killed: take over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
        return
    raise Claimed(f"could not claim point {key} at {path}")
