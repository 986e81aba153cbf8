"""Dynamic hard negatives: a published index of the training corpus under a recent encoder,
corrected between full refreshes, searched and sampled by the training workers.

The pieces, each small and testable on its own:

- ``Snapshot``: what one checkpoint's encoder made of the corpus (doc embeddings, the training
  queries' embeddings) plus the k-means clusters over the docs. Immutable: publishing a new
  index means handing out a new snapshot, never editing the old one, so a reader holds either
  the old index or the new one, never a mix. Docs are positions in the training data's passage
  order (``raydr.data.store``: sorted doc ids), so a snapshot carries no ids. Embeddings are
  stored in fp16 by default (``training.mining.index_dtype``): half of fp32's bytes. Every
  score, bound and cluster is computed from the stored values, so top-k and softmax draws are
  exact over the stored index; against fp32 they differ only by the rounding of each component
  (relative 2⁻¹¹). The arrays travel through Ray's object store, which hands the training
  workers of a node one shared, read-only copy (no worker copies them).
- ``NystromMap``: between full refreshes only ``k`` landmark docs are re-encoded. Their move
  ``Δ_L = Y_L - X_L`` is extended to every stale doc through the landmarks:
  ``X + X X_L⁺ Δ_L = X + K_NL K_LL⁺ Δ_L`` (linear kernel, ``K_NL = X X_Lᵀ``), the Nyström
  extension Monath et al. (2023) use to track how a parameter update moves the targets without
  re-encoding them. With ``ridge`` > 0 it is the regularised extension
  ``K_NL (K_LL + λI)⁻¹ Δ_L``: real updates are not low-rank, and near k = D the plain solve
  amplifies noise (`raydr bench mining`: mean cosine to the re-encoded docs fell from 0.95 to
  0.36 at k = 384 = D; λ = the mean eigenvalue of ``X_Lᵀ X_L`` kept it above 0.96 at every k).
  Without ridge it is exact when the docs span at most ``k`` dimensions and the update acts
  linearly on them. A doc's component outside the landmarks' span keeps its stale value (a
  plain map ``X X_L⁺ Y_L`` would zero it).
- ``NegativeIndex``: a snapshot made searchable in a worker. It serves the exact top-``depth``
  by pruned cluster search, and *exact* samples from the softmax ``exp(s/τ)`` over the whole
  corpus by rejection: clusters are probed best bound first until the unprobed clusters' bound
  mass is small, probed docs are drawn with their exact weights, and an unprobed cluster's doc
  is proposed under its cluster bound ``q·μ_c + ‖q‖ r_c`` and accepted with
  ``exp((s - bound)/τ)``. Judged docs of the query are never returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from raydr.errors import RaydrError

Kind = Literal["refresh", "nystrom"]


@dataclass(frozen=True)
class Clusters:
    """k-means clusters over (N, D) embeddings, members stored cluster by cluster (CSR)."""

    centroids: np.ndarray  # (C, D) float32
    radius: np.ndarray  # (C,) max ‖x - μ_c‖ over the cluster's members
    order: np.ndarray  # (N,) int32 doc positions, grouped by cluster
    offsets: np.ndarray  # (C + 1,) cluster c's members are order[offsets[c]:offsets[c + 1]]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def assignment(self) -> np.ndarray:
        """(N,) each doc's cluster (not stored: the workers never need it)."""
        assign = np.empty(len(self.order), dtype=np.int32)
        assign[self.order] = np.repeat(np.arange(len(self.sizes), dtype=np.int32), self.sizes)
        return assign


BLOCK = 65_536  # rows widened to float32 at a time: a refresh never copies the whole index


def _blocks(n: int) -> Iterable[slice]:
    return (slice(lo, min(lo + BLOCK, n)) for lo in range(0, n, BLOCK))


def kmeans_assign(emb: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster (N, D) embeddings (fp16 or fp32) with faiss k-means → (N,) int32 cluster ids.

    Trained on at most faiss's own sample (``max_points_per_centroid`` per cluster, drawn
    seeded here so only the sample is widened to float32), then assigned block by block."""
    import faiss

    n = len(emb)
    c = max(1, min(n_clusters, n))
    if c == 1:
        return np.zeros(n, dtype=np.int32)
    km = faiss.Kmeans(emb.shape[1], c, niter=20, seed=seed, verbose=False, spherical=False)
    # faiss warns below 39 points per centroid; the clusters only steer the search, so fine.
    km.cp.min_points_per_centroid = 1
    cap = km.cp.max_points_per_centroid * c
    rows = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False)) if n > cap else None
    km.train(np.ascontiguousarray(emb if rows is None else emb[rows], dtype=np.float32))
    assign = np.empty(n, dtype=np.int32)
    for block in _blocks(n):
        _, nearest = km.index.search(np.ascontiguousarray(emb[block], dtype=np.float32), 1)
        assign[block] = nearest[:, 0]
    return assign


def clusters_from(emb: np.ndarray, assign: np.ndarray) -> Clusters:
    """Centroids and radii of a given assignment, over (possibly moved) embeddings.

    Used after a Nyström correction: the assignment is kept, the geometry follows the docs, so
    the bounds stay valid for the corrected embeddings. ``emb`` is the stored index (fp16 or
    fp32): the bounds hold for the values the search scores. Block by block, in row order (the
    same sums as one pass), never widening the whole index."""
    n_clusters = int(assign.max()) + 1 if len(assign) else 0
    order = np.argsort(assign, kind="stable").astype(np.int32)
    sizes = np.bincount(assign, minlength=n_clusters)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    sums = np.zeros((n_clusters, emb.shape[1]), dtype=np.float64)
    for block in _blocks(len(emb)):
        np.add.at(sums, assign[block], np.asarray(emb[block], dtype=np.float32))
    centroids = (sums / np.maximum(sizes, 1)[:, None]).astype(np.float32)
    radius = np.zeros(n_clusters, dtype=np.float32)
    for block in _blocks(len(emb)):
        x = np.asarray(emb[block], dtype=np.float32)
        dist = np.linalg.norm(x - centroids[assign[block]], axis=1)
        np.maximum.at(radius, assign[block], dist.astype(np.float32))
    # A hair of slack: float32 rounding must never make a bound smaller than a true score.
    return Clusters(centroids, radius + 1e-5, order, offsets)


@dataclass(frozen=True)
class Snapshot:
    """One published mining index. Never mutated after it is built."""

    step: int  # checkpoint whose encoder gave the query (and, for a refresh, doc) embeddings
    base_step: int  # the full refresh the doc embeddings derive from (== step for a refresh)
    kind: Kind
    doc_emb: np.ndarray  # (N, D) float16 or float32; row i is the passage at position i
    query_ids: tuple[str, ...]  # the training queries
    query_emb: np.ndarray  # (Q, D) same dtype as doc_emb
    clusters: Clusters

    @property
    def n_docs(self) -> int:
        return len(self.doc_emb)

    @property
    def nbytes(self) -> int:
        c = self.clusters
        arrays = (self.doc_emb, self.query_emb, c.centroids, c.radius, c.order, c.offsets)
        return int(sum(a.nbytes for a in arrays))

    def describe(self) -> dict[str, int | str]:
        return {"index_step": self.step, "index_base_step": self.base_step, "index_kind": self.kind}


DTYPES = {"fp16": np.float16, "fp32": np.float32}


def refresh(
    step: int,
    doc_emb: np.ndarray,
    query_ids: Sequence[str],
    query_emb: np.ndarray,
    n_clusters: int,
    seed: int = 0,
    dtype: str = "fp16",
) -> Snapshot:
    """A full refresh: every doc freshly encoded at ``step`` ((N, D), row i the passage at
    position i), stored as ``dtype``, clustered anew over the stored values. ``doc_emb``
    already in ``dtype`` (the validator encodes into it) is stored as it is, not copied."""
    stored = np.ascontiguousarray(doc_emb, dtype=DTYPES[dtype])
    assign = kmeans_assign(stored, n_clusters, seed)
    return Snapshot(
        step=step,
        base_step=step,
        kind="refresh",
        doc_emb=stored,
        query_ids=tuple(query_ids),
        query_emb=np.ascontiguousarray(query_emb, dtype=DTYPES[dtype]),
        clusters=clusters_from(stored, assign),
    )


class NystromMap:
    """The landmarks' move, extended to every doc: ``x ↦ x + x X_L⁺ (Y_L - X_L)``."""

    def __init__(self, stale: np.ndarray, fresh: np.ndarray, ridge: float = 1.0) -> None:
        """``stale``, ``fresh``: (k, D) embeddings of the same landmark docs. ``ridge``: λ in
        units of the mean eigenvalue of ``X_Lᵀ X_L`` (scale-free); 0 solves exactly."""
        if stale.shape != fresh.shape or stale.ndim != 2:
            raise ValueError(f"landmarks: stale {stale.shape} and fresh {fresh.shape} differ")
        x = stale.astype(np.float64)
        move = fresh.astype(np.float64) - x
        if ridge == 0:
            # lstsq gives the minimum-norm X_L⁺ Δ_L, also when k < D (rank-deficient).
            self.delta, *_ = np.linalg.lstsq(x, move, rcond=None)  # (D, D)
        else:
            gram = x.T @ x
            lam = ridge * np.trace(gram) / len(gram)
            self.delta = np.linalg.solve(gram + lam * np.eye(len(gram)), x.T @ move)

    def apply(self, stale: np.ndarray, normalize: bool) -> np.ndarray:
        """(N, D) stale → (N, D) corrected, L2-normalised when the encoder normalises."""
        x = stale.astype(np.float64)
        out = x + x @ self.delta
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


def pick_landmarks(
    n_docs: int, k: int, seed: int, prefer: Iterable[int] = (), what: str = "landmarks"
) -> np.ndarray:
    """``k`` doc positions, drawn (seeded) first from ``prefer``, then from the rest.

    ``prefer`` is the validation subset: those docs are encoded for validation anyway, so
    landmarks among them cost no extra encoder pass."""
    if k > n_docs:
        raise RaydrError(
            f"training.mining.{what}={k} is larger than the training corpus ({n_docs} docs); "
            f"expected at most {n_docs}"
        )
    rng = np.random.default_rng([seed, 4099])
    preferred = np.array(sorted(set(int(p) for p in prefer)), dtype=np.int64)
    first = rng.permutation(preferred)[:k]
    if len(first) == k:
        return np.sort(first)
    rest = np.setdiff1d(np.arange(n_docs), first)
    more = rng.choice(rest, size=k - len(first), replace=False)
    return np.sort(np.concatenate([first, more]))


def nystrom_update(
    base: Snapshot,
    step: int,
    landmarks: np.ndarray,
    fresh: np.ndarray,
    query_emb: np.ndarray,
    normalize: bool,
    ridge: float = 1.0,
) -> Snapshot:
    """``base``'s docs moved to ``step`` through the map fitted on ``landmarks``.

    ``landmarks``: (k,) doc positions; ``fresh``: (k, D) their embeddings at ``step``;
    ``query_emb``: (Q, D) the training queries at ``step``. The landmarks themselves take their
    true fresh embeddings. Always corrects from the full refresh, never from a corrected
    snapshot, so errors do not compound."""
    dtype = base.doc_emb.dtype
    corrected = NystromMap(base.doc_emb[landmarks], fresh, ridge).apply(base.doc_emb, normalize)
    corrected[landmarks] = fresh
    corrected = corrected.astype(dtype, copy=False)
    return Snapshot(
        step=step,
        base_step=base.base_step,
        kind="nystrom",
        doc_emb=corrected,
        query_ids=base.query_ids,
        query_emb=np.ascontiguousarray(query_emb, dtype=dtype),
        # Same assignment, geometry recomputed: the bounds hold for the corrected docs.
        clusters=clusters_from(corrected, base.clusters.assignment()),
    )


def default_clusters(n_docs: int) -> int:
    """√N clusters (``training.mining.clusters`` unset): see ``MiningConfig.clusters_for``."""
    from raydr.config import MiningConfig

    return MiningConfig().clusters_for(n_docs)


EXACT_BELOW = 100_000  # docs: exact search and sampling below, ``nprobe`` clusters from here on


def default_nprobe(n_docs: int, n_clusters: int) -> int | None:
    """None (exact) below ``EXACT_BELOW`` docs; else a sixteenth of the clusters. In 384
    dimensions the cluster bounds prune almost nothing (``raydr bench scale``: 99.99% of docs
    scored), so an exact draw costs a pass over the corpus: seconds per query at 10^6."""
    return None if n_docs < EXACT_BELOW else max(1, math.ceil(n_clusters / 16))


class NegativeIndex:
    """A snapshot made searchable in a training worker: top-k and softmax draws per query.

    ``nprobe`` None: exact over the whole index. ``nprobe`` k: an inverted-file search over the
    k clusters with the highest bounds (more when they hold too few docs to draw from), and
    exact *within* them: ``top`` is the exact top-``depth`` of the probed docs, and ``sample``
    draws exactly from the softmax restricted to them. That restriction is the whole error: its
    total-variation distance from the full softmax is the unprobed docs' share of the mass,
    ``1 - p(probed)``, which the cluster bounds cap at ``tail / (probed + tail)`` (true probed
    mass, bound tail mass); ``last_tv_bound`` holds that cap for the latest draw."""

    def __init__(self, snapshot: Snapshot, nprobe: int | None = None) -> None:
        self.snapshot = snapshot
        self.nprobe = nprobe
        self._query = {q: i for i, q in enumerate(snapshot.query_ids)}
        self.scored = 0  # docs scored exactly so far (the search's cost)
        self.last_tv_bound = 0.0

    def knows(self, query_id: str) -> bool:
        return query_id in self._query

    def _prepare(self, query_id: str, exclude: Iterable[int]):
        q = self.snapshot.query_emb[self._query[query_id]].astype(np.float32)
        c = self.snapshot.clusters
        bounds = c.centroids @ q + float(np.linalg.norm(q)) * c.radius  # (C,)
        banned = {int(d) for d in exclude}
        return q, bounds, banned

    def _members(self, cluster: int) -> np.ndarray:
        c = self.snapshot.clusters
        return c.order[c.offsets[cluster] : c.offsets[cluster + 1]]

    def _scores(self, members: np.ndarray, q: np.ndarray) -> np.ndarray:
        # fp16 rows widened per cluster: numpy has no fast fp16 product, and the full index is
        # never widened at once.
        return self.snapshot.doc_emb[members].astype(np.float32) @ q

    def top(self, query_id: str, depth: int, exclude: Iterable[int] = ()) -> list[int]:
        """The exact top-``depth`` doc positions for the query, ``exclude`` (positions) left
        out, best first.

        Clusters are scored best bound first; the search stops when the ``depth``-th best
        score found beats every unprobed cluster's bound."""
        q, bounds, banned = self._prepare(query_id, exclude)
        pos: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        kth = -np.inf
        for rank, cluster in enumerate(np.argsort(-bounds, kind="stable")):
            if bounds[cluster] < kth:
                break
            if self.nprobe is not None and rank >= self.nprobe and sum(map(len, pos)) >= depth:
                break  # approximate: the probed clusters' exact top
            members = self._members(cluster)
            members = members[~np.isin(members, list(banned))] if banned else members
            pos.append(members)
            scores.append(self._scores(members, q))
            self.scored += len(members)
            found = np.concatenate(scores)
            if len(found) >= depth:
                kth = np.partition(found, len(found) - depth)[len(found) - depth]
        p, s = np.concatenate(pos), np.concatenate(scores)
        return [int(i) for i in p[np.argsort(-s, kind="stable")[:depth]]]

    def sample(
        self,
        query_id: str,
        n: int,
        temperature: float,
        rng: np.random.Generator,
        exclude: Iterable[int] = (),
        slack: float = 0.1,
    ) -> list[int]:
        """``n`` distinct doc positions drawn from softmax(score / temperature) over the
        corpus, ``exclude`` left out (successive sampling without replacement), exactly.

        Probing stops once the unprobed clusters' bound mass is at most ``slack`` times the
        probed mass: the smaller ``slack``, the more docs scored and the fewer rejections."""
        q, bounds, banned = self._prepare(query_id, exclude)
        tau = temperature
        top = float(bounds.max())
        mass = self.snapshot.clusters.sizes * np.exp((bounds - top) / tau)  # (C,) bound mass
        probed_pos: list[np.ndarray] = []
        probed_w: list[np.ndarray] = []
        probed_mass, left = 0.0, float(mass.sum())
        unprobed = np.ones(len(bounds), dtype=bool)
        kept = 0  # unbanned docs probed
        for rank, cluster in enumerate(np.argsort(-bounds, kind="stable")):
            if self.nprobe is not None:
                if rank >= self.nprobe and kept >= n:
                    break  # approximate: the softmax over the probed clusters only
            elif probed_mass > 0 and left <= slack * probed_mass:
                break
            members = self._members(cluster)
            w = np.exp((self._scores(members, q) - top) / tau)
            out = np.isin(members, list(banned))
            w[out] = 0.0
            kept += len(members) - int(out.sum())
            self.scored += len(members)
            probed_pos.append(members)
            probed_w.append(w)
            probed_mass += float(w.sum())
            left -= float(mass[cluster])
            unprobed[cluster] = False
        pos = np.concatenate(probed_pos)
        weight = np.concatenate(probed_w)
        tail = np.flatnonzero(unprobed)
        tail_mass = mass[tail]
        self.last_tv_bound = 0.0
        if self.nprobe is not None and len(tail):
            bound = float(tail_mass.sum())
            self.last_tv_bound = bound / (probed_mass + bound) if probed_mass + bound else 1.0
            tail, tail_mass = tail[:0], tail_mass[:0]  # no rejection branch: the tail is left
        picked: list[int] = []
        available = self.snapshot.n_docs - len(banned)
        if n > available:
            raise RaydrError(
                f"query {query_id!r}: {n} negatives asked for, but only {available} unjudged "
                f"docs exist in the training corpus"
            )
        while len(picked) < n:
            z_probed, z_tail = float(weight.sum()), float(tail_mass.sum())
            if z_probed + z_tail == 0:  # every weight below float64's range: exp(<-745)
                raise RaydrError(
                    f"query {query_id!r}: every softmax weight underflowed at "
                    f"training.mining.temperature={tau}; raise it, or normalise the embeddings "
                    f"(model.normalize: true)"
                )
            if rng.random() * (z_probed + z_tail) < z_probed:
                i = int(rng.choice(len(pos), p=weight / z_probed))
                picked.append(int(pos[i]))
                weight[i] = 0.0  # without replacement
                continue
            # An unprobed cluster under its bound; a uniform member; accept by its true score.
            j = int(rng.choice(len(tail), p=tail_mass / z_tail))
            members = self._members(int(tail[j]))
            d_at = int(rng.integers(len(members)))
            d = int(members[d_at])
            self.scored += 1
            accept = math.exp(
                (float(self._scores(members[d_at : d_at + 1], q)[0]) - float(bounds[tail[j]])) / tau
            )
            if d in banned or d in picked or rng.random() >= accept:
                continue  # rejected: draw again from the start (keeps the draw exact)
            picked.append(d)
        return picked
