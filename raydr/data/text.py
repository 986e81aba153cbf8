"""How a corpus row becomes the text a model or BM25 sees."""

from __future__ import annotations

import pyarrow as pa


def passage_texts(corpus: pa.Table) -> list[str]:
    """``title + " " + text`` per doc, as BEIR and MTEB join them (a missing title adds nothing)."""
    titles = corpus.column("title").to_pylist()
    texts = corpus.column("text").to_pylist()
    return [f"{t} {x}".strip() for t, x in zip(titles, texts, strict=True)]
