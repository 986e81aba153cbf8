"""Training data on disk: passages by position, training rows by index, built once.

A training worker used to hold the whole corpus as a dict of Python strings (and a second dict
from doc id to position), plus every training row: its memory grew with the corpus, several GB
per worker at MS MARCO's 8.8M passages, times the workers of a node. The driver now builds two
Arrow IPC files once (``ensure``), and a worker reads from them only what its batches need:
- a passage's text is read with ``pread`` at its byte range, never memory-mapped: a mapped
  page counts in the worker's RSS once touched (and Linux maps the pages around each fault
  too), so a long run would map the whole corpus; a read goes through the page cache, which
  the node's workers share and the kernel can drop;
- the rows carry their docs as positions, resolved on the driver, so a worker never needs the
  corpus's ids at all. Rows grow with the training queries, not the corpus; they are
  memory-mapped.

Why files and not Ray Data: the loop's sharding is a pure function of (seed, epoch, rank, rows
consumed), which is what makes a resumed run bit-identical to an uninterrupted one, also after
an elastic restart changed the world size. Ray Data's ``streaming_split`` hands blocks to
whichever worker asks first and cannot seek to row r of an epoch's permutation; a row file
gives random access to row r.

Layout (under ``store_dir(data)``; a source that changed gets a new name, the stale one is
removed):
- ``passages-<fingerprint>/``: ``passages.arrow`` (doc_id, passage = title + " " + text),
  sorted by doc id, so a doc's position is the rank of its id (what the loop's integer doc
  index always was: masks and memory-bank rows in older checkpoints mean the same docs);
  ``keys.npy``, the 64-bit hashes of the ids, sorted, and ``slots.npy``, each hash's position:
  the driver's id → position lookup, a binary search checked against the id itself.
- ``rows-<split>-<fingerprint>.arrow``: query_id, query, positives, negatives (positions), and
  query_doc, the position of a doc whose id is the query's (BEIR's self-match; -1 if none).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydr.errors import RaydrError

STORE_VERSION = 2
_BATCH = 1 << 16  # rows per record batch of the files built here (rows: position → batch by divmod)
_PASSAGES = pa.schema([("doc_id", pa.string()), ("passage", pa.string())])
_ROWS = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("positives", pa.list_(pa.int64())),
        ("negatives", pa.list_(pa.int64())),
        ("query_doc", pa.int64()),
    ]
)


@dataclass(frozen=True)
class TrainingData:
    """Where a run's training data is: what the driver hands every worker."""

    passages: str  # a passages-<fingerprint>/ folder
    rows: str  # a rows-<split>-<fingerprint>.arrow file


@dataclass(frozen=True)
class Row:
    """A training row with its docs as passage positions (sorted, as ``build_rows`` sorts ids)."""

    query_id: str
    query: str
    positives: tuple[int, ...]
    negatives: tuple[int, ...]
    query_doc: int  # the doc whose id is the query's, or -1: never a negative (BEIR)


def doc_key(doc_id: str) -> int:
    """A stable 64-bit key of a doc id (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


def _keys(doc_ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((doc_key(d) for d in doc_ids), dtype=np.uint64, count=len(doc_ids))


def _open_ipc(path: Path) -> tuple[pa.MemoryMappedFile, pa.ipc.RecordBatchFileReader]:
    try:
        mapped = pa.memory_map(str(path), "r")
        return mapped, pa.ipc.open_file(mapped)
    except (OSError, pa.ArrowException) as exc:
        raise RaydrError(f"{path}: unreadable training-data store ({exc}); delete it") from None


class _Strings:
    """A string column of an Arrow IPC file, read by position with ``pread``.

    The file is mapped once, to find each record batch's offsets and data buffers (their
    addresses minus the mapping's base are their places in the file); after that a value
    costs two small reads and maps nothing."""

    def __init__(self, path: Path, column: int) -> None:
        mapped, reader = _open_ipc(path)
        mapped.seek(0)
        base = mapped.read_buffer(mapped.size()).address  # the batches are slices of this map
        self._where = []  # per batch: (file offset of its int32 offsets, of its bytes)
        self._starts = []  # per batch: its first row (batches may differ in length)
        self.num_rows = 0
        for i in range(reader.num_record_batches):
            array = reader.get_batch(i).column(column)
            _, offsets, data = array.buffers()
            start = offsets.address - base + 4 * array.offset
            self._where.append((start, data.address - base if data is not None else 0))
            self._starts.append(self.num_rows)
            self.num_rows += len(array)
        mapped.close()  # from here on only the file descriptor is used
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __getitem__(self, position: int) -> str:
        if not 0 <= position < self.num_rows:
            raise IndexError(f"position {position} outside 0..{self.num_rows - 1}")
        batch = bisect.bisect_right(self._starts, position) - 1
        i = int(position) - self._starts[batch]
        offsets, data = self._where[batch]
        lo, hi = np.frombuffer(os.pread(self._fd, 8, offsets + 4 * i), dtype="<i4")
        return os.pread(self._fd, int(hi - lo), data + int(lo)).decode("utf-8")


class PassageStore:
    """The corpus in doc-id order: ``texts`` for the workers, ``positions`` for the driver."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._ids = _Strings(self.folder / "passages.arrow", 0)
        self._texts = _Strings(self.folder / "passages.arrow", 1)
        self._keys = self._slots = None  # the id lookup: loaded when first asked

    def __len__(self) -> int:
        return self._texts.num_rows

    def texts(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """The passages (title + " " + text) at ``positions``."""
        return [self._texts[p] for p in positions]

    def doc_id(self, position: int) -> str:
        return self._ids[position]

    def positions(self, doc_ids: Sequence[str], missing: int | None = None) -> np.ndarray:
        """Each doc's position → (n,) int64. An id not in the corpus is ``missing`` when given,
        else an error naming it."""
        if self._keys is None:
            self._keys = np.load(self.folder / "keys.npy", mmap_mode="r")
            self._slots = np.load(self.folder / "slots.npy", mmap_mode="r")
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


class RowStore:
    """Training rows, memory-mapped (they grow with the queries, not the corpus):
    ``store[j]`` is row j."""

    def __init__(self, path: str | Path) -> None:
        _, reader = _open_ipc(Path(path))
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]

    def __len__(self) -> int:
        return sum(b.num_rows for b in self._batches)

    def __getitem__(self, j: int) -> Row:
        batch, i = divmod(int(j), _BATCH)
        values = [column[i].as_py() for column in self._batches[batch].columns]
        query_id, query, positives, negatives, query_doc = values
        return Row(query_id, query, tuple(positives), tuple(negatives), query_doc)


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
    from raydr.data.tables import qrels_files

    sources = [*qrels_files(data_dir, split), data_dir / "queries.parquet"]
    if negatives is not None:
        sources.append(Path(negatives))
    name = f"rows-{split}-{_stamp(*sources, passages / 'passages.arrow')}.arrow"
    rows = root / name
    if not rows.is_file():
        _build_rows(data_dir, split, negatives, PassageStore(passages), rows)
        _remove_stale(root, f"rows-{split}-", keep=name)
    return TrainingData(passages=str(passages), rows=str(rows))


def ensure_passages(data_dir: str | Path, root: Path | None = None) -> Path:
    """Build (once) the passages of a dataset; → their folder."""
    data_dir = Path(data_dir)
    root = root or store_dir(data_dir)
    folder = root / f"passages-{_stamp(data_dir / 'corpus.parquet')}"
    if not (folder / "keys.npy").is_file():
        _build_passages(data_dir, folder)
        _remove_stale(root, "passages-", keep=folder.name)
    return folder


def _build_passages(data_dir: Path, folder: Path) -> None:
    """Sort the corpus by doc id into ``folder`` without holding its text: the ids alone are
    sorted; the passages stream to a scratch file as they come, then are read back by position,
    one batch at a time, in id order (the driver's memory is the ids', not the corpus's)."""
    import pyarrow.compute as pc

    from raydr.atomic import atomic_dir
    from raydr.data.tables import corpus_ids, iter_corpus
    from raydr.data.text import passage_texts

    ids = corpus_ids(data_dir)
    order = pc.sort_indices(ids).to_numpy()
    ids = ids.take(order).combine_chunks()  # sorted
    keys = np.concatenate(
        [_keys(ids.slice(lo, _BATCH).to_pylist()) for lo in range(0, len(ids), _BATCH)]
        or [np.empty(0, dtype=np.uint64)]
    )
    slots = np.argsort(keys, kind="stable")
    sorted_keys = keys[slots]
    twins = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if len(twins):
        a, b = ids[int(slots[twins[0]])].as_py(), ids[int(slots[twins[0] + 1])].as_py()
        what = f"doc_id {a!r} appears twice" if a == b else f"doc ids {a!r} and {b!r} collide"
        raise RaydrError(f"{data_dir / 'corpus.parquet'}: {what}; doc ids must be unique")
    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            scratch = tmp / "unsorted.arrow"  # file order, batches as Parquet gives them
            _write_ipc(
                scratch,
                _PASSAGES,
                (
                    [part["doc_id"].combine_chunks(), pa.array(passage_texts(part))]
                    for part in iter_corpus(data_dir, _BATCH)
                ),
            )
            unsorted = _Strings(scratch, 1)
            _write_ipc(
                tmp / "passages.arrow",
                _PASSAGES,
                (
                    [
                        ids.slice(lo, _BATCH),
                        pa.array([unsorted[r] for r in order[lo : lo + _BATCH]]),
                    ]
                    for lo in range(0, len(order), _BATCH)
                ),
            )
            del unsorted
            scratch.unlink()
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

    rows = []
    for row in build_rows(data_dir, split, load_negatives(negatives) if negatives else None):
        # Qrels may judge docs the corpus lacks (some BEIR sets do): they stay out of the
        # groups (a worker could not read them) and mask nothing.
        positives = passages.positions(row.positives, missing=-1)
        if (positives < 0).all():
            raise RaydrError(
                f"{data_dir / 'qrels' / (split + '.parquet')}: query {row.query_id!r} has no "
                f"positive in corpus.parquet (e.g. {row.positives[0]!r}); expected judged docs "
                f"of the corpus"
            )
        mined = passages.positions(row.negatives, missing=-1)
        if (mined < 0).any():
            doc = row.negatives[int(np.flatnonzero(mined < 0)[0])]
            raise RaydrError(
                f"{negatives}: query {row.query_id!r} has negative {doc!r}, which is not in "
                f"{data_dir / 'corpus.parquet'}; mine negatives from this dataset"
            )
        # Positions are ranks of sorted ids, so the ids' order (build_rows sorts positives;
        # sampling sorts negatives) is the positions' order: the same groups are drawn.
        query_doc = int(passages.positions([row.query_id], missing=-1)[0])
        rows.append((row.query_id, row.query, positives[positives >= 0], mined, query_doc))
    lists = pa.list_(pa.int64())
    with atomic_path(path) as tmp:
        _write_ipc(
            tmp,
            _ROWS,
            (
                [
                    pa.array([r[0] for r in part]),
                    pa.array([r[1] for r in part]),
                    pa.array([r[2] for r in part], lists),
                    pa.array([r[3] for r in part], lists),
                    pa.array([r[4] for r in part], pa.int64()),
                ]
                for part in (rows[i : i + _BATCH] for i in range(0, len(rows), _BATCH))
            ),
        )


def _write_ipc(path: Path, schema: pa.Schema, batches: Iterable[list[pa.Array]]) -> None:
    """An Arrow IPC file, one record batch per item of ``batches`` (``_BATCH`` rows each,
    the last shorter, except in the build's scratch file)."""
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
