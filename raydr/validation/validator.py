"""A warm validator: holds its queries, qrels and tokenised corpus subset; scores checkpoints.

One instance lives in one Ray actor (or, for inline validation, in training's rank 0).
Start-up (load data, tokenise the subset) happens once; each checkpoint then costs only: load
weights, encode, index, retrieve, score. With dynamic negatives the same actor also rebuilds the
training corpus's mining index from the checkpoint, and one encode serves both jobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raydr.config import MiningConfig, RaydrConfig

if TYPE_CHECKING:
    from raydr.data.split import Split
    from raydr.mining.dynamic import Kind, Snapshot


@dataclass
class _MiningData:
    """The training queries as token ids, and where the corpus is read from. The corpus is not
    held: a refresh reads and encodes it chunk by chunk (``CHUNK``), by store position."""

    passages: str  # the store folder (``raydr.data.store``): index row p is its passage p
    n_docs: int
    query_ids: list[str]
    queries: list[np.ndarray]
    subset: np.ndarray | None = None  # (S,) store positions of the validation subset's docs


CHUNK = 8192  # passages read, tokenised and encoded at a time by a refresh


class Validator:
    def __init__(self, cfg: RaydrConfig, subset: list[str] | None, threads: int = 1) -> None:
        import torch

        from raydr.dist import pin_cpus
        from raydr.validation.scatter import queries_of

        torch.set_num_threads(max(1, int(threads)))  # Ray actors start with one thread
        self.cfg = cfg  # resolved at the driver: never re-validated here
        pin_cpus(cfg.validation.cpus)
        self._subset = subset
        self._split: Split | None = None  # the corpus side: loaded when first needed
        self._also: list[tuple[str, Split]] | None = None  # validation.also, loaded when needed
        self.queries = queries_of(cfg, cfg.validation.split)  # all a shard needs besides its docs
        self._tokens: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._query_tokens: dict[str, list[np.ndarray]] = {}
        self._mining: dict[str, _MiningData] = {}

    @property
    def split(self) -> Split:
        """The validation queries over the subset (or whole corpus), texts held in memory: what
        a checkpoint validated whole needs. A validator that only runs shards never loads it,
        so its memory is its shard's, not the corpus's."""
        if self._split is None:
            from raydr.data.split import load_split

            vcfg = self.cfg.validation
            split = load_split(self.cfg.data.path, vcfg.split).limit_queries(vcfg.max_queries)
            self._split = split.restrict(self._subset) if self._subset is not None else split
        return self._split

    def holds_corpus(self) -> bool:
        """Whether this validator has loaded corpus text (a whole checkpoint was validated)."""
        return self._split is not None

    def _tokenized(self, retriever) -> tuple[list[np.ndarray], list[np.ndarray]]:
        # Cache per vocabulary: every checkpoint of a run shares one tokenizer, so the subset is
        # tokenised once; a foreign model with another vocabulary gets its own entry.
        key = retriever.tokenizer_fingerprint()
        if key not in self._tokens:
            self._tokens[key] = (
                retriever.tokenize(self.split.passages, "passages"),
                self._queries_tokenized(retriever),
            )
        return self._tokens[key]

    def _queries_tokenized(self, retriever) -> list[np.ndarray]:
        key = retriever.tokenizer_fingerprint()
        if key not in self._query_tokens:
            self._query_tokens[key] = retriever.tokenize(self.queries["queries"], "queries")
        return self._query_tokens[key]

    def _retriever(self, path: str):
        from raydr.retrieval.dense import DenseRetriever
        from raydr.training import checkpoint

        return DenseRetriever(*checkpoint.load(path, self.cfg.model), self.cfg)

    def ping(self) -> bool:
        return True

    def warm(self) -> int:
        """Tokenise with the configured model's tokenizer now: the subset, or only the queries
        when the pool scatters checkpoints (each shard reads its passages when it runs).
        → passages tokenised."""
        retriever = self._retriever(self.cfg.model.name)
        if self.cfg.validation.resolved_shards() > 1:
            self._queries_tokenized(retriever)
            return 0
        return len(self._tokenized(retriever)[0])

    def shard(
        self,
        path: str,
        step: int,
        passages: str,
        positions: Sequence[int],
        keep: str | None = None,
    ) -> dict | tuple[dict, np.ndarray]:
        """One shard of a scattered validation: the validation queries' exact top-``depth``
        among the passages at ``positions`` of the store at ``passages`` (read by position, so
        this holds its shard's text only). → {"run": per-query top lists, timings, sizes};
        the pool merges the shards' runs and scores them once (``scatter.merge``). ``keep``
        (an index dtype, for a scattered refresh): → (that dict, the passages' embeddings in
        that dtype), two returns, so the embeddings stay in the object store for ``assemble``."""
        from raydr.data.store import PassageStore
        from raydr.validation.scatter import top_within

        t0, started_at = time.perf_counter(), time.time()
        retriever = self._retriever(path)
        queries = self._queries_tokenized(retriever)
        t_load = time.perf_counter()
        bs = self.cfg.validation.batch_size
        query_emb = retriever.embed_ids(queries, "queries", batch_size=bs)
        t_queries = time.perf_counter()
        run, encode_s, doc_emb = top_within(
            self.cfg, retriever, PassageStore(passages), positions, query_emb, self.queries
        )
        out = {
            "run": run,
            "passages_encoded": len(positions),
            "load_s": t_load - t0,
            "encode_s": t_queries - t_load + encode_s,
            "shard_s": time.perf_counter() - t0,
            "node_id": _node_id(),
            "started_at": started_at,
            "finished_at": time.time(),
        }
        if keep is None:
            return out
        from raydr.mining.dynamic import DTYPES

        return out, np.ascontiguousarray(doc_emb, dtype=DTYPES[keep])

    def assemble(self, path: str, step: int, parts: list, mining: MiningConfig) -> Snapshot:
        """A scattered refresh's index: the shards' embeddings (refs, in position order, each
        read zero-copy from the object store) joined into one (N, D) array, the training
        queries encoded with the checkpoint at ``path``, then clustered (``dynamic.refresh``)."""
        import ray

        from raydr.mining import dynamic

        retriever = self._retriever(path)
        data = self._mining_data(retriever)
        query_emb = retriever.embed_ids(
            data.queries, "queries", batch_size=self.cfg.validation.batch_size
        )
        corpus = np.concatenate(ray.get(parts))  # the one copy: the index's own rows
        if len(corpus) != data.n_docs:
            raise RuntimeError(f"shards cover {len(corpus)} docs of {data.n_docs}")
        return dynamic.refresh(
            step,
            corpus,
            data.query_ids,
            query_emb,
            mining.clusters_for(data.n_docs),
            self.cfg.seed,
            dtype=mining.index_dtype,
        )

    def validate(self, path: str, step: int) -> dict[str, Any]:
        """Score the checkpoint of ``step`` at ``path``. → flat dict: metrics, the declared
        primary metric, timings, sizes.

        Raises RaydrError when the checkpoint cannot be loaded (recorded as failed upstream).
        """
        return self.work(path, step)[0]

    def work(self, path: str, step: int, **job: Any) -> tuple[dict[str, Any], Snapshot | None]:
        """``stream`` (same arguments) run to the end. → (flat metrics dict, the new index or
        None)."""
        parts = self.stream(path, step, **job)
        return next(parts), next(parts)

    def stream(
        self,
        path: str,
        step: int,
        mine: Kind | None = None,
        base: Snapshot | None = None,
        mining: MiningConfig | None = None,
        validate: bool = True,
    ) -> Iterator[Any]:
        """Validate the checkpoint, then rebuild the mining index from it, sharing the encode.

        Yields twice: the flat metrics dict as soon as validation is scored (so its ledger row
        never waits for the corpus), then the new index (None without ``mine``). ``mine``:
        "refresh" encodes the rest of the training corpus and joins it to the validation
        subset's rows, already encoded; "nystrom" encodes only the landmarks outside the subset
        and corrects ``base`` (the last refresh). ``mining``: the trial's ``training.mining``.
        """
        from raydr.mining import dynamic
        from raydr.retrieval.dense import search_and_score

        t0, started_at = time.perf_counter(), time.time()
        retriever = self._retriever(path)
        docs, queries = self._tokenized(retriever)
        bs = self.cfg.validation.batch_size
        if mine is None:
            kind = None
        elif mine == "nystrom" and base is not None:
            kind = "nystrom"
        else:
            kind = "refresh"  # a correction needs a refresh to correct
        mcfg = mining or MiningConfig()
        data = self._mining_data(retriever) if kind else None
        n_docs = 0 if data is None else data.n_docs
        in_subset = (
            {int(p): i for i, p in enumerate(self._subset_positions(data))}
            if data is not None and validate
            else {}
        )
        if kind == "nystrom":
            prefer = data.subset if validate else ()  # set by _subset_positions above
            marks = dynamic.pick_landmarks(
                n_docs, mcfg.landmarks, self.cfg.seed + base.base_step, prefer
            )
            extra = [int(p) for p in marks if int(p) not in in_subset]
        else:
            # Positions as an array: a list of 8.8M ints alone would be 300 MB.
            everything = np.arange(n_docs if kind else 0, dtype=np.int64)
            extra = np.setdiff1d(everything, np.fromiter(in_subset, np.int64, len(in_subset)))
        plan: dict[str, Any] = {}
        if kind is not None:
            plan = {
                "mining_kind": kind,
                "mining_passages_encoded": len(extra),  # beyond validation's
                "mining_queries_encoded": len(data.query_ids),
                "mining_landmarks": mcfg.landmarks if kind == "nystrom" else 0,
                "index_step": step,
                "index_base_step": step if kind == "refresh" else base.base_step,
                "refresh_every": mcfg.refresh_every,
            }
        t_load = time.perf_counter()
        doc_emb = retriever.embed_ids(docs, "passages", batch_size=bs) if validate else None
        if not validate:
            yield {**plan, "checkpoint_step": step, "node_id": _node_id()}
        else:
            query_emb = retriever.embed_ids(queries, "queries", batch_size=bs)
            t_enc = time.perf_counter()
            metrics, run = search_and_score(
                self.cfg,
                doc_emb,
                query_emb,
                self.split.doc_ids,
                self.split.query_ids,
                self.split.qrels,
            )
            metrics, also = self._with_also(retriever, metrics)
            t_end = time.perf_counter()
            self.last_run = run
            yield {
                **metrics,
                **also,
                "primary_metric": self.cfg.eval.primary_metric,
                "checkpoint_step": step,
                "subset_size": len(self.split.doc_ids),
                "num_queries": len(self.split.query_ids),
                "passages_encoded": len(docs) + len(extra),  # this checkpoint's, all uses
                "load_s": t_load - t0,
                "encode_s": t_enc - t_load,
                "search_s": t_end - t_enc,
                "validation_s": t_end - t0,
                "node_id": _node_id(),  # where it ran: placement is checkable from the ledger
                "started_at": started_at,
                "finished_at": time.time(),
                **plan,
            }
        if kind is None:
            yield None
            return
        # The mining part: only what validation did not already encode.
        from raydr.data.store import PassageStore

        store = PassageStore(data.passages)
        query_emb = retriever.embed_ids(data.queries, "queries", batch_size=bs)
        if kind == "refresh":
            # Encoded straight into the stored dtype: no float32 copy of the corpus is held.
            corpus = np.empty((n_docs, query_emb.shape[1]), dtype=dynamic.DTYPES[mcfg.index_dtype])
            encode_into(corpus, retriever, store, extra, bs)
            if in_subset:
                corpus[data.subset] = doc_emb  # one encode serves both
            n_clusters = mcfg.clusters_for(n_docs)
            yield dynamic.refresh(
                step,
                corpus,
                data.query_ids,
                query_emb,
                n_clusters,
                self.cfg.seed,
                dtype=mcfg.index_dtype,
            )
            return
        fresh = retriever.embed(store.texts(extra), "passages", batch_size=bs)  # landmarks only
        landmark = np.empty((len(marks), query_emb.shape[1]), dtype=np.float32)
        row_of = {p: i for i, p in enumerate(extra)}
        for i, p in enumerate(int(p) for p in marks):
            landmark[i] = doc_emb[in_subset[p]] if p in in_subset else fresh[row_of[p]]
        yield dynamic.nystrom_update(
            base, step, marks, landmark, query_emb, self.cfg.model.normalize, mcfg.ridge
        )

    def _with_also(self, retriever, metrics: dict[str, float]) -> tuple[dict[str, float], dict]:
        """``metrics`` (validation.split's) with every ``validation.also`` dev set scored by the
        same model: → (their weighted mean under each metric's name, with the parts as
        METRIC/NAME; sizes and time). Unchanged without ``also``."""
        if not self.cfg.validation.also:
            return metrics, {}
        from raydr.retrieval.dense import search_and_score
        from raydr.retrieval.metrics import weighted_mean

        t0 = time.perf_counter()
        bs = self.cfg.validation.batch_size
        main = dev_label(self.cfg)
        parts, encoded = {main: metrics}, 0
        for label, split in self._also_splits():
            key = f"also:{label}:{retriever.tokenizer_fingerprint()}"
            if key not in self._tokens:
                self._tokens[key] = (
                    retriever.tokenize(split.passages, "passages"),
                    retriever.tokenize(split.queries, "queries"),
                )
            docs, queries = self._tokens[key]
            parts[label], _ = search_and_score(
                self.cfg,
                retriever.embed_ids(docs, "passages", batch_size=bs),
                retriever.embed_ids(queries, "queries", batch_size=bs),
                split.doc_ids,
                split.query_ids,
                split.qrels,
            )
            encoded += len(docs)
        weights = {main: self.cfg.validation.weight}
        weights.update({c.label(): c.weight for c in self.cfg.validation.also})
        return weighted_mean(parts, weights), {
            "also_passages_encoded": encoded,
            "also_s": time.perf_counter() - t0,
        }

    def _also_splits(self) -> list[tuple[str, Split]]:
        """The other dev sets, each sampled as validation.split is: whole when this validator
        searches the whole corpus, else the judged docs plus ``sampling.size`` drawn with
        ``sampling.seed`` or BM25's pool (pure functions of the data: every validator draws the
        same)."""
        if self._also is None:
            from raydr.data.split import load_split
            from raydr.validation.sampling import bm25_pool, select

            vcfg, scfg = self.cfg.validation, self.cfg.validation.sampling
            self._also = []
            for dev in vcfg.also:
                split = load_split(dev.path, dev.split).limit_queries(vcfg.max_queries)
                if self._subset is not None:
                    pools = {}
                    if scfg.strategy == "bm25-pool":
                        pools["bm25"] = bm25_pool(
                            split.passages, split.doc_ids, split.queries, scfg.depth, self.cfg.bm25
                        )
                    split = split.restrict(select(scfg, split.doc_ids, split.qrels, **pools))
                self._also.append((dev.label(), split))
        return self._also

    def _mining_data(self, retriever) -> _MiningData:
        """The training queries, tokenised once per vocabulary, and the corpus's store."""
        key = "mining:" + retriever.tokenizer_fingerprint()
        if key not in self._mining:
            from raydr.data.groups import build_rows
            from raydr.data.store import PassageStore, ensure_passages

            # Store order (doc ids sorted): an index row is the passage at that position of the
            # training data, which is what the workers' draws name.
            folder = ensure_passages(self.cfg.data.path)
            rows = build_rows(self.cfg.data.path, self.cfg.training.split)
            self._mining[key] = _MiningData(
                passages=str(folder),
                n_docs=len(PassageStore(folder)),
                query_ids=[r.query_id for r in rows],
                queries=retriever.tokenize([r.query for r in rows], "queries"),
            )
        return self._mining[key]

    def _subset_positions(self, data: _MiningData) -> np.ndarray:
        """Store positions of the validation subset's docs, in ``self.split``'s order (the rows
        of a validation encode), found once."""
        if data.subset is None:
            from raydr.data.store import PassageStore

            data.subset = PassageStore(data.passages).positions(self.split.doc_ids)
        return data.subset

    def run_of_last(self) -> dict[str, dict[str, float]]:
        return self.last_run


def encode_into(
    out: np.ndarray,
    retriever,
    store,
    positions: np.ndarray,
    batch_size: int,
    chunk: int = CHUNK,
) -> None:
    """Encode the store's passages at ``positions`` into ``out[positions]`` ((N, D), float32 or
    the index's fp16), ``chunk`` passages at a time: the corpus's text is never held whole."""
    for lo in range(0, len(positions), chunk):
        part = positions[lo : lo + chunk]
        out[part] = retriever.embed(store.texts(part), "passages", batch_size=batch_size)


def validate_on_full_corpus(cfg: RaydrConfig, path: str, step: int, threads: int) -> dict[str, Any]:
    """The checkpoint validated on the whole corpus of the validation split, not the sampled
    subset: what a search names its winner on (run as a Ray task, one per checkpoint)."""
    return Validator(cfg, None, threads).validate(path, step)


def dev_label(cfg: RaydrConfig) -> str:
    """validation.split's name among several dev sets (``validation.also``): its data folder."""
    return Path(cfg.data.path).name


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
