"""Read back what an offline W&B run wrote (``run-ID.wandb``), for tests: W&B's own reader
lives in its Go service now, and its Python API needs a server.

The file is LevelDB's log format (32 KiB blocks of checksummed chunks, after W&B's 7-byte
header), each record one ``wandb_internal_pb2.Record``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = struct.Struct("<4sHB")  # ":W&B", magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Every record of a ``.wandb`` file, in the order written → ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, _, _ = HEADER.unpack_from(data)
    if ident != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = HEADER.size, []
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
        if kind == 0:
            continue
        parts.append(body)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def run_file(folder: str | Path, run_id: str) -> Path:
    """The newest offline file of run ``run_id`` under ``folder`` (a W&B ``dir``)."""
    found = sorted(Path(folder).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    if not found:
        raise FileNotFoundError(f"no offline W&B run {run_id} under {folder}/wandb")
    return found[-1]


def history(path: str | Path) -> list[dict]:
    """The rows ``run.log`` wrote, each as {key: value}."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({_key(item): json.loads(item.value_json) for item in record.history.item})
    return rows


def config(path: str | Path) -> dict:
    """The run's config, as ``wandb.init(config=…)`` and later updates set it."""
    out: dict = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else ()
        if kind == "config":
            updates = record.config.update
        for item in updates:
            out[_key(item)] = json.loads(item.value_json)
    return {k: v.get("value", v) if isinstance(v, dict) else v for k, v in out.items()}


def runs(path: str | Path) -> list[dict]:
    """The run records: id, name, group and job type, as ``wandb.init`` named them."""
    fields = ("run_id", "display_name", "run_group", "job_type", "project")
    return [
        {f: getattr(record.run, f) for f in fields}
        for record in records(path)
        if record.WhichOneof("record_type") == "run"
    ]


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def artifacts(path: str | Path) -> list[dict]:
    """The artifacts the run logged: name, type, and the files of each."""
    out = []
    for record in records(path):
        if record.WhichOneof("record_type") == "artifact":
            art = record.artifact
            files = [entry.path for entry in art.manifest.contents]
            out.append({"name": art.name, "type": art.type, "files": files})
    return out
