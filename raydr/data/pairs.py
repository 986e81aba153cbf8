"""Self-retrieval collections: each item's short ``query`` must find its own long ``text``
among the others, written as a BEIR folder (``build-debian``, ``build-manpages``).

Cleaning, so that every qrel is right: items with no query or a text under ``min_words``
words are dropped; then every item whose query or text (compared case- and
whitespace-insensitively) another item shares is dropped, all of them, since two documents
would be equally right for one query. The draw of documents, and of queries among them, is a
pure function of ``seed`` and the cleaned items sorted by name.

Output (written atomically as a whole): ``corpus.jsonl``, ``queries.jsonl``,
``qrels/test.tsv`` (grade 1) and ``SOURCE.md``, ready for ``raydr import-beir``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raydr.atomic import atomic_dir
from raydr.errors import RaydrError

QUERY_PREFIX = "q-"  # query ids: q-<name>, so no query id equals a doc id
SPLIT = "test"


@dataclass(frozen=True)
class Pair:
    """One item: its unique ``name`` (the doc id), ``query``, and the document's title/text."""

    name: str
    query: str
    title: str
    text: str


def clean(pairs: Sequence[Pair], min_words: int) -> tuple[list[Pair], int, int]:
    """Drop short or query-less items, then all items sharing a query or a text.

    → (kept, dropped as short, dropped as shared). Short ones go first: an item that is not in
    the collection cannot make another one's query ambiguous."""
    long = [p for p in pairs if p.query and len(p.text.split()) >= min_words]
    queries = Counter(_key(p.query) for p in long)
    texts = Counter(_key(p.text) for p in long)
    kept = [p for p in long if queries[_key(p.query)] == 1 and texts[_key(p.text)] == 1]
    return kept, len(pairs) - len(long), len(long) - len(kept)


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def check_sizes(num_queries: int, num_docs: int, min_words: int) -> None:
    if not 1 <= num_queries <= num_docs:
        raise RaydrError(
            f"--queries {num_queries}, --docs {num_docs}: expected 1 <= queries <= docs"
        )
    if min_words < 0:
        raise RaydrError(f"min_words {min_words}: expected a count >= 0")


def write_collection(
    items: Sequence[Pair],
    out: Path | str,
    *,
    counts: dict[str, int],
    what: str,
    sources: Sequence[Path],
    num_queries: int,
    num_docs: int,
    seed: int,
    min_words: int,
    overwrite: bool,
    source_md: Callable[[list[str], dict[str, Any]], str],
) -> dict[str, Any]:
    """Clean ``items`` (``counts[what]`` of them were read; ``counts`` opens the report), draw ``num_docs`` documents and
    ``num_queries`` queries among them, and write the BEIR folder ``out``. ``source_md(files,
    report)`` writes ``SOURCE.md`` (``files``: a markdown list of the sources with their
    sha256). An existing non-empty ``out`` is refused unless ``overwrite``. → the report."""
    check_sizes(num_queries, num_docs, min_words)
    out = Path(out)
    kept, short, shared = clean(items, min_words)
    if len(kept) < num_docs:
        names = ", ".join(str(p) for p in sources)
        raise RaydrError(
            f"{names}: {len(kept)} usable {what} ({counts[what]} read, {short} too short, "
            f"{shared} sharing a query or text), but --docs asks for {num_docs}"
        )
    # Sorted by name first, so the draw does not depend on the order of the files.
    kept.sort(key=_name)
    rng = np.random.default_rng(seed)
    docs = sorted((kept[i] for i in rng.choice(len(kept), num_docs, replace=False)), key=_name)
    queries = sorted((docs[i] for i in rng.choice(num_docs, num_queries, replace=False)), key=_name)
    report: dict[str, Any] = {
        "sources": [str(p) for p in sources],
        **counts,
        "dropped_short": short,
        "dropped_shared": shared,
        "kept": len(kept),
        "docs": len(docs),
        "queries": len(queries),
        "seed": seed,
        "min_words": min_words,
    }
    files = [f"- `{p}` (sha256 `{sha256(p)}`)" if p.is_file() else f"- `{p}`" for p in sources]
    # An empty folder (made by hand, or by a mount) holds nothing to lose.
    empty = out.is_dir() and not any(out.iterdir())
    with atomic_dir(out, overwrite=overwrite or empty) as tmp:
        # The temp dir is renamed as a whole, so plain writes inside it are atomic enough.
        _write_jsonl(
            tmp / "corpus.jsonl", [{"_id": p.name, "title": p.title, "text": p.text} for p in docs]
        )
        _write_jsonl(
            tmp / "queries.jsonl",
            [{"_id": QUERY_PREFIX + p.name, "text": p.query} for p in queries],
        )
        (tmp / "qrels").mkdir()
        rows = "".join(f"{QUERY_PREFIX}{p.name}\t{p.name}\t1\n" for p in queries)
        (tmp / "qrels" / f"{SPLIT}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8"
        )
        (tmp / "SOURCE.md").write_text(source_md(files, report), encoding="utf-8")
    return {"out": str(out), **report}


def _name(pair: Pair) -> str:
    return pair.name


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
