"""Memory-mapped training data: passages by doc id, training rows by index.

A training worker used to hold the whole corpus as a dict of Python strings (and a second dict
from doc id to position), plus every training row: its memory grew with the corpus, several GB
per worker at MS MARCO's 8.8M passages, times the workers of a node. Both now live in Arrow IPC
files that the driver builds once (``ensure``) and every worker memory-maps: a worker reads the
pages of the rows and passages in its batches and nothing else, and the operating system shares
those pages between the workers of a node (and can drop them: they are file-backed, not heap).

Why files and not Ray Data: the loop's sharding is a pure function of (seed, epoch, rank, rows
consumed), which is what makes a resumed run bit-identical to an uninterrupted one, also after
an elastic restart changed the world size. Ray Data's ``streaming_split`` hands blocks to
whichever worker asks first, and cannot seek to row r of an epoch's permutation; a
memory-mapped table gives random access to row r at a page's cost.

Layout (under ``store_dir(data)``; a source that changed gets a new name, the stale one is
removed):
- ``passages-<fingerprint>/``: ``passages.arrow`` (doc_id, passage = title + " " + text),
  sorted by doc id, so a doc's position is the rank of its id (what the loop's integer doc
  index always was: masks and memory-bank rows in older checkpoints mean the same docs);
  ``keys.npy``, the 64-bit hashes of the ids, sorted, and ``slots.npy``, each hash's position:
  a lookup is a binary search in two memory-mapped arrays, checked against the id itself.
- ``rows-<split>-<fingerprint>.arrow``: query_id, query, positives, negatives (doc ids).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydr.errors import RaydrError

STORE_VERSION = 1
_BATCH = 1 << 16  # rows per record batch: position → (batch, offset) with no search
_PASSAGES = pa.schema([("doc_id", pa.string()), ("passage", pa.string())])
_ROWS = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("positives", pa.list_(pa.string())),
        ("negatives", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class TrainingData:
    """Where a run's memory-mapped training data is: what the driver hands every worker."""

    passages: str  # a passages-<fingerprint>/ folder
    rows: str  # a rows-<split>-<fingerprint>.arrow file


def doc_key(doc_id: str) -> int:
    """A stable 64-bit key of a doc id (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


def _keys(doc_ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((doc_key(d) for d in doc_ids), dtype=np.uint64, count=len(doc_ids))


class _Batches:
    """A memory-mapped Arrow IPC file of equal-sized record batches, read by row position."""

    def __init__(self, path: Path) -> None:
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except (OSError, pa.ArrowException) as exc:
            raise RaydrError(f"{path}: unreadable training-data store ({exc}); delete it") from None
        self.path = path
        self.num_rows = sum(b.num_rows for b in self._batches)

    def value(self, column: int, position: int):
        batch, offset = divmod(int(position), _BATCH)
        return self._batches[batch].column(column)[offset].as_py()


class PassageStore:
    """The corpus, memory-mapped: doc id ↔ position (doc-id order) and passage text."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self._table = _Batches(folder / "passages.arrow")
        self._keys = np.load(folder / "keys.npy", mmap_mode="r")
        self._slots = np.load(folder / "slots.npy", mmap_mode="r")
        self.folder = folder

    def __len__(self) -> int:
        return self._table.num_rows

    def positions(self, doc_ids: Sequence[str], missing: int | None = None) -> np.ndarray:
        """Each doc's position → (n,) int64. An id not in the corpus is ``missing`` when given,
        else an error naming it."""
        keys = _keys(doc_ids)
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        out = np.asarray(self._slots[at], dtype=np.int64)
        for i, doc in enumerate(doc_ids):
            # The key is a hash: confirm the id itself, so an unknown id never aliases a doc.
            if self._keys[at[i]] != keys[i] or self.doc_id(out[i]) != doc:
                if missing is None:
                    raise RaydrError(f"{self.folder}: doc {doc!r} is not in the corpus")
                out[i] = missing
        return out

    def doc_id(self, position: int) -> str:
        return self._table.value(0, position)

    def texts(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """The passages (title + " " + text) at ``positions``."""
        return [self._table.value(1, p) for p in positions]


class RowStore:
    """Training rows, memory-mapped: ``store[j]`` is row j as a ``TrainRow``."""

    def __init__(self, path: str | Path) -> None:
        self._table = _Batches(Path(path))

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, j: int):
        from raydr.data.groups import TrainRow

        t = self._table
        return TrainRow(t.value(0, j), t.value(1, j), tuple(t.value(2, j)), tuple(t.value(3, j)))


# ---------------------------------------------------------------- building (the driver)


def store_dir(data_dir: str | Path) -> Path:
    """Next to the dataset when it is writable, else under the user's cache."""
    data_dir = Path(data_dir)
    if os.access(data_dir, os.W_OK):
        return data_dir / ".store"
    cache = Path(os.environ.get("RAYDR_CACHE", Path.home() / ".cache" / "raydr"))
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return cache / "store" / digest


def _stamp(*paths: Path) -> str:
    """A fingerprint of files by path, size and modification time (re-imports change it)."""
    parts = [str(STORE_VERSION)]
    for path in paths:
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def ensure(data_dir: str | Path, split: str, negatives: str | Path | None) -> TrainingData:
    """Build (once) the memory-mapped passages and training rows of a dataset; → their paths.
    Called on the driver: bad data fails here, in one line, before any worker starts."""
    data_dir = Path(data_dir)
    root = store_dir(data_dir)
    passages = ensure_passages(data_dir, root)
    sources = [data_dir / "qrels" / f"{split}.parquet", data_dir / "queries.parquet"]
    if negatives is not None:
        sources.append(Path(negatives))
    name = f"rows-{split}-{_stamp(*sources, passages / 'passages.arrow')}.arrow"
    rows = root / name
    if not rows.is_file():
        _build_rows(data_dir, split, negatives, PassageStore(passages), rows)
        _remove_stale(root, f"rows-{split}-", keep=name)
    return TrainingData(passages=str(passages), rows=str(rows))


def ensure_passages(data_dir: Path, root: Path) -> Path:
    folder = root / f"passages-{_stamp(data_dir / 'corpus.parquet')}"
    if not (folder / "keys.npy").is_file():
        _build_passages(data_dir, folder)
        _remove_stale(root, "passages-", keep=folder.name)
    return folder


def _build_passages(data_dir: Path, folder: Path) -> None:
    import pyarrow.compute as pc

    from raydr.atomic import atomic_dir
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts

    corpus = load_corpus(data_dir)
    order = pc.sort_indices(corpus, [("doc_id", "ascending")])
    ids = corpus["doc_id"].take(order)
    keys = _keys(ids.to_pylist())
    slots = np.argsort(keys, kind="stable")
    sorted_keys = keys[slots]
    twins = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if len(twins):
        a, b = ids[int(slots[twins[0]])].as_py(), ids[int(slots[twins[0] + 1])].as_py()
        what = f"doc_id {a!r} appears twice" if a == b else f"doc ids {a!r} and {b!r} collide"
        raise RaydrError(f"{data_dir / 'corpus.parquet'}: {what}; doc ids must be unique")
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            _write_ipc(
                tmp / "passages.arrow",
                _PASSAGES,
                (
                    [part["doc_id"].combine_chunks(), pa.array(passage_texts(part))]
                    for part in (
                        corpus.take(order[start : start + _BATCH])
                        for start in range(0, len(order), _BATCH)
                    )
                ),
            )
            np.save(tmp / "slots.npy", slots.astype(np.int64))
            np.save(tmp / "keys.npy", sorted_keys)  # last: its presence marks a whole store
            (tmp / "store.json").write_text(
                json.dumps({"version": STORE_VERSION, "docs": len(order)}) + "\n"
            )
    except OSError as exc:
        raise RaydrError(f"{folder}: cannot write the training-data store ({exc})") from None


def _build_rows(
    data_dir: Path, split: str, negatives: str | Path | None, passages: PassageStore, path: Path
) -> None:
    from raydr.atomic import atomic_path
    from raydr.data.groups import build_rows, load_negatives

    rows = build_rows(data_dir, split, load_negatives(negatives) if negatives else None)
    kept = []
    for row in rows:
        # Qrels may judge docs the corpus lacks (some BEIR sets do): they stay out of the
        # groups (a worker could not read them) and mask nothing.
        known = passages.positions(row.positives, missing=-1) >= 0
        if not known.any():
            raise RaydrError(
                f"{data_dir / 'qrels' / (split + '.parquet')}: query {row.query_id!r} has no "
                f"positive in corpus.parquet (e.g. {row.positives[0]!r}); expected judged docs "
                f"of the corpus"
            )
        unknown = passages.positions(row.negatives, missing=-1) < 0
        if unknown.any():
            doc = row.negatives[int(np.flatnonzero(unknown)[0])]
            raise RaydrError(
                f"{negatives}: query {row.query_id!r} has negative {doc!r}, which is not in "
                f"{data_dir / 'corpus.parquet'}; mine negatives from this dataset"
            )
        positives = tuple(d for d, k in zip(row.positives, known, strict=True) if k)
        kept.append(
            row if len(positives) == len(row.positives) else replace(row, positives=positives)
        )
    rows = kept
    strings = pa.list_(pa.string())
    with atomic_path(path) as tmp:
        _write_ipc(
            tmp,
            _ROWS,
            (
                [
                    pa.array([r.query_id for r in part]),
                    pa.array([r.query for r in part]),
                    pa.array([list(r.positives) for r in part], strings),
                    pa.array([list(r.negatives) for r in part], strings),
                ]
                for part in (rows[i : i + _BATCH] for i in range(0, len(rows), _BATCH))
            ),
        )


def _write_ipc(path: Path, schema: pa.Schema, batches: Iterable[list[pa.Array]]) -> None:
    """An Arrow IPC file of ``_BATCH``-row record batches (the last may be shorter)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for columns in batches:
            writer.write_batch(pa.record_batch(columns, schema=schema))


def _remove_stale(root: Path, prefix: str, keep: str) -> None:
    """Stores of a source that has since changed. A worker that still maps one keeps reading
    it: on POSIX a removed file lives until its last mapping goes."""
    from raydr.atomic import remove_dir

    for old in root.glob(f"{prefix}*"):
        if old.name == keep or old.name.startswith("."):
            continue
        if old.is_dir():
            remove_dir(old)
        else:
            old.unlink(missing_ok=True)
