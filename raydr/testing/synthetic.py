"""Test and benchmark support, not product: a tiny BERT built in code and a synthetic corpus of
any size (``raydr bench scale``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# MS MARCO passages: about 56 words on average (Nguyen et al. 2016 report 55.98 for the
# passage collection); a lognormal with that mean and a spread of 24 words.
MEAN_WORDS, SD_WORDS = 56.0, 24.0
QUERY_WORDS = 6


def tiny_bert(out: Path, words: Iterable[str], seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT whose WordPiece vocabulary is ``words``, saved in HF format."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    return out


def vocabulary(size: int = 4000) -> list[str]:
    """Pseudo-words ``wa``, ``wb``, …: letters only, so WordPiece keeps each one whole."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(size):
        word, n = "", i
        while True:
            word = letters[n % 26] + word
            n = n // 26 - 1
            if n < 0:
                break
        out.append("w" + word)
    return out


def synthetic_beir(
    root: Path, n_docs: int, n_queries: int, seed: int = 0, vocab: list[str] | None = None
) -> Path:
    """A BEIR folder of ``n_docs`` random passages (Zipf-distributed words, MS MARCO's length
    distribution) and ``n_queries`` training queries, each six words of its one positive."""
    root = Path(root)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    words = np.array(vocab or vocabulary())
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, len(words) + 1)  # Zipf: BM25's idf has something to weigh
    freq /= freq.sum()
    sigma = math.sqrt(math.log(1 + (SD_WORDS / MEAN_WORDS) ** 2))
    mu = math.log(MEAN_WORDS) - sigma**2 / 2
    positives = rng.choice(n_docs, size=min(n_queries, n_docs), replace=False)
    asked = {int(d): q for q, d in enumerate(positives)}
    queries: dict[int, str] = {}
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for start in range(0, n_docs, 50_000):  # in chunks: the corpus is never held whole
            n = min(50_000, n_docs - start)
            lengths = np.maximum(4, rng.lognormal(mu, sigma, n).round().astype(int))
            flat = words[rng.choice(len(words), size=int(lengths.sum()), p=freq)]
            ends = np.cumsum(lengths)
            for k in range(n):
                text = flat[ends[k] - lengths[k] : ends[k]]
                doc = start + k
                if doc in asked:
                    queries[asked[doc]] = " ".join(rng.choice(text, QUERY_WORDS))
                fh.write(json.dumps({"_id": f"d{doc}", "title": "", "text": " ".join(text)}))
                fh.write("\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": f"q{q}", "text": queries[q]}) + "\n" for q in queries)
    with open(root / "qrels" / "train.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"q{q}\td{int(d)}\t1\n" for q, d in enumerate(positives))
    return root


def synthetic_training_file(
    path: Path, n_records: int, negatives: int = 3, words: int = 40, seed: int = 0
) -> tuple[Path, Path]:
    """Tevatron training JSON lines of ``n_records`` records, and the same data as a BEIR
    folder beside it (``<path>.beir``, for ``import-beir`` to import as the baseline).

    Record i's positive is doc i; its negatives are other docs drawn at random, so a doc
    recurs about ``negatives + 1`` times across the file (what de-duplication must catch).
    A doc's text is a function of its number alone, so every sighting carries the same text.
    Both are written a record at a time: the file's size is not the writer's memory."""
    path = Path(path)
    beir = path.with_name(path.name + ".beir")
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    rng = np.random.default_rng(seed)

    def doc(d: int) -> dict[str, str]:
        text = " ".join(vocab[(d * 7919 + j * 104_729) % len(vocab)] for j in range(words))
        return {"docid": f"d{d}", "title": "", "text": text}

    with (
        open(path, "w", encoding="utf-8") as fh,
        open(beir / "corpus.jsonl", "w", encoding="utf-8") as corpus,
        open(beir / "queries.jsonl", "w", encoding="utf-8") as queries,
        open(beir / "qrels" / "train.tsv", "w", encoding="utf-8") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for start in range(0, n_records, 10_000):
            picks = rng.integers(0, n_records, size=(min(10_000, n_records - start), negatives))
            for k, negs in enumerate(picks):
                i = start + k
                positive = doc(i)
                query = " ".join(positive["text"].split()[:QUERY_WORDS])
                record = {
                    "query_id": f"q{i}",
                    "query": query,
                    "positive_passages": [positive],
                    "negative_passages": [doc(int(d)) for d in negs if d != i],
                }
                fh.write(json.dumps(record) + "\n")
                corpus.write(
                    json.dumps({"_id": positive["docid"], "title": "", "text": positive["text"]})
                    + "\n"
                )
                queries.write(json.dumps({"_id": f"q{i}", "text": query}) + "\n")
                qrels.write(f"q{i}\td{i}\t1\n")
    return path, beir
