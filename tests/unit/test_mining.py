"""Dynamic negatives: the Nyström correction, the cluster bounds, exact top-k and exact softmax
sampling over a published snapshot (``raydr.mining.dynamic``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from raydr.errors import RaydrError
from raydr.mining.dynamic import (
    NegativeIndex,
    NystromMap,
    nystrom_update,
    pick_landmarks,
    refresh,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(n: int, dim: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around ``centres`` random directions: what trained encoders' docs look like."""
    rng = np.random.default_rng(seed)
    mu = _unit(rng.normal(size=(centres, dim)))
    return _unit(mu[rng.integers(centres, size=n)] + spread * rng.normal(size=(n, dim)))


def _snapshot(docs: np.ndarray, queries: np.ndarray, clusters: int, dtype: str = "fp32"):
    return refresh(10, docs, [f"q{i}" for i in range(len(queries))], queries, clusters, dtype=dtype)


# ------------------------------------------------------------------------------------ Nyström


@pytest.mark.parametrize("extra", [0, 5])
def test_nystrom_is_exact_when_the_update_is_truly_low_rank(extra: int) -> None:
    # Docs in an r-dimensional subspace of D, and an update that is a linear map: k >= r
    # landmarks pin the map down on the whole subspace, so every doc is corrected exactly.
    rng = np.random.default_rng(0)
    n, dim, r = 400, 32, 6
    stale = rng.normal(size=(n, r)) @ rng.normal(size=(r, dim))
    fresh = stale @ (np.eye(dim) + 0.5 * rng.normal(size=(dim, dim)))
    marks = pick_landmarks(n, r + extra, seed=1)
    corrected = NystromMap(stale[marks], fresh[marks], ridge=0).apply(stale, normalize=False)
    np.testing.assert_allclose(corrected, fresh, rtol=1e-4, atol=1e-4)


def test_nystrom_with_too_few_landmarks_is_not_exact_but_beats_stale() -> None:
    # The negative control: r - 2 landmarks cannot pin down an r-dimensional map.
    rng = np.random.default_rng(0)
    n, dim, r = 400, 32, 6
    stale = rng.normal(size=(n, r)) @ rng.normal(size=(r, dim))
    fresh = stale @ (np.eye(dim) + 0.5 * rng.normal(size=(dim, dim)))
    marks = pick_landmarks(n, r - 2, seed=1)
    corrected = NystromMap(stale[marks], fresh[marks], ridge=0).apply(stale, normalize=False)
    err = np.linalg.norm(corrected - fresh) / np.linalg.norm(fresh)
    assert err > 1e-2
    assert err < np.linalg.norm(stale - fresh) / np.linalg.norm(fresh)


@pytest.mark.parametrize("k", [16, 64, 256])
def test_regularised_nystrom_beats_stale_on_a_full_rank_nonlinear_update(k: int) -> None:
    # Full-rank docs, an update with a nonlinearity: no map is exact. The default ridge keeps
    # the correction better than stale at every landmark count, k = D (64) included, where
    # the exact solve interpolates the landmarks' noise.
    rng = np.random.default_rng(5)
    stale = _blobs(2000, 64, 20, 0.3, seed=5)
    fresh = _unit(np.tanh(stale @ (np.eye(64) + rng.normal(size=(64, 64)) / 8)) * 2)
    fresh = _unit(fresh + 0.05 * rng.normal(size=fresh.shape))
    marks = pick_landmarks(len(stale), k, seed=0)
    rest = np.setdiff1d(np.arange(len(stale)), marks)

    def cosine(a: np.ndarray) -> float:
        return float(np.mean(np.sum(_unit(a) * fresh[rest], axis=1)))

    corrected = NystromMap(stale[marks], fresh[marks]).apply(stale[rest], normalize=True)
    assert cosine(corrected) > cosine(stale[rest]) + 0.04
    if k == 64:  # why the ridge: the exact solve at k = D falls far below stale
        exact = NystromMap(stale[marks], fresh[marks], ridge=0).apply(stale[rest], True)
        assert cosine(exact) < cosine(stale[rest]) - 0.1


def test_nystrom_update_keeps_the_assignment_and_bounds_hold_for_the_corrected_docs() -> None:
    rng = np.random.default_rng(3)
    docs = _blobs(300, 16, 5, 0.3, seed=3)
    queries = _unit(rng.normal(size=(20, 16)))
    base = _snapshot(docs, queries, 8)
    moved = _unit(docs @ (np.eye(16) + 0.3 * rng.normal(size=(16, 16))))
    marks = pick_landmarks(len(docs), 64, seed=0)
    snap = nystrom_update(base, 20, marks, moved[marks], queries, normalize=True)
    assert (snap.step, snap.base_step, snap.kind) == (20, 10, "nystrom")
    np.testing.assert_array_equal(snap.clusters.assignment(), base.clusters.assignment())
    np.testing.assert_allclose(snap.doc_emb[marks], moved[marks])  # landmarks are exact
    np.testing.assert_allclose(np.linalg.norm(snap.doc_emb, axis=1), 1.0, atol=1e-5)
    assert base.doc_emb is docs or not np.shares_memory(base.doc_emb, snap.doc_emb)
    c = snap.clusters
    for q in queries:  # no doc scores above its cluster's bound
        bound = c.centroids @ q + np.linalg.norm(q) * c.radius
        assert np.all(snap.doc_emb @ q <= bound[c.assignment()] + 1e-6)


def test_nystrom_update_leaves_the_base_snapshot_bit_identical() -> None:
    """Pins ``nystrom_update`` to a new array: writing the correction into the base would
    corrupt the published refresh that readers hold and every later correction starts from."""
    rng = np.random.default_rng(4)
    docs = _blobs(200, 16, 5, 0.3, seed=4)
    queries = _unit(rng.normal(size=(10, 16)))
    base = _snapshot(docs, queries, 6)
    before = {
        "doc_emb": base.doc_emb.copy(),
        "query_emb": base.query_emb.copy(),
        "centroids": base.clusters.centroids.copy(),
        "radius": base.clusters.radius.copy(),
    }
    moved = _unit(docs @ (np.eye(16) + 0.3 * rng.normal(size=(16, 16))))
    marks = pick_landmarks(len(docs), 32, seed=0)
    at_20 = _unit(queries + 0.1 * rng.normal(size=queries.shape))  # the queries at step 20
    snap = nystrom_update(base, 20, marks, moved[marks], at_20, normalize=True)
    after = {
        "doc_emb": base.doc_emb,
        "query_emb": base.query_emb,
        "centroids": base.clusters.centroids,
        "radius": base.clusters.radius,
    }
    for name, array in before.items():
        same = after[name].tobytes() == array.tobytes()  # bit for bit, not just close
        assert same, f"base.{name} was written to"
    # The update did move the docs, so an in-place write would have shown above.
    rest = np.setdiff1d(np.arange(len(docs)), marks)
    assert np.abs(snap.doc_emb[rest] - before["doc_emb"][rest]).max() > 0.1
    np.testing.assert_array_equal(snap.doc_emb[marks], moved[marks])
    assert not np.shares_memory(snap.doc_emb, base.doc_emb)


def test_landmarks_prefer_the_validation_subset_and_refuse_more_than_the_corpus() -> None:
    subset = [3, 5, 8, 13, 21, 34]
    assert set(pick_landmarks(100, 4, seed=0, prefer=subset)) <= set(subset)
    both = set(pick_landmarks(100, 10, seed=0, prefer=subset))
    assert set(subset) <= both and len(both) == 10
    with pytest.raises(RaydrError, match=r"landmarks=101 is larger than the training corpus"):
        pick_landmarks(100, 101, seed=0)


# ------------------------------------------------------------------------ top-k and sampling


def test_top_is_the_exact_top_k_without_judged_docs_and_prunes_clusters() -> None:
    rng = np.random.default_rng(1)
    docs = _blobs(2000, 24, 40, 0.05, seed=1)
    # Queries near docs (few clusters matter) and between blobs (the bounds are close calls).
    near = docs[rng.integers(2000, size=25)] + 0.05 * rng.normal(size=(25, 24))
    queries = _unit(np.concatenate([near, rng.normal(size=(25, 24))]))
    index = NegativeIndex(_snapshot(docs, queries, 45))
    for i, q in enumerate(queries):
        judged = {int(np.argmax(docs @ q))}
        got = index.top(f"q{i}", 10, exclude=judged)
        scores = docs @ q
        want = [int(j) for j in np.argsort(-scores, kind="stable") if j not in judged][:10]
        assert got == want
    assert index.scored < 0.5 * len(queries) * len(docs)  # the bounds skipped most clusters


@pytest.mark.parametrize(("slack", "dtype"), [(0.05, "fp32"), (1e9, "fp32"), (1e9, "fp16")])
def test_sampler_frequencies_match_the_softmax(slack: float, dtype: str) -> None:
    # A small exact case: 60 docs, 6 clusters. slack=1e9 stops probing after the first cluster,
    # so the rejection branch (unprobed clusters under their bounds) does most of the drawing;
    # both must be exact. An fp16 index is exact over its stored (rounded) embeddings.
    rng = np.random.default_rng(7)
    docs = _blobs(60, 8, 4, 0.4, seed=7)
    queries = _unit(rng.normal(size=(1, 8)))
    index = NegativeIndex(_snapshot(docs, queries, 6, dtype))
    tau, judged = 0.3, {0, 1, 2}
    draws = np.random.default_rng(123)
    counts = np.zeros(len(docs))
    trials = 12000
    for _ in range(trials):
        counts[index.sample("q0", 1, tau, draws, judged, slack)[0]] += 1
    allowed = np.array([i not in judged for i in range(len(docs))])
    assert counts[~allowed].sum() == 0

    def expected(t: float) -> np.ndarray:
        stored = index.snapshot
        q = stored.query_emb[0].astype(np.float64)
        logits = stored.doc_emb.astype(np.float64) @ q / t
        p = np.exp(logits - logits.max()) * allowed
        return trials * p[allowed] / p.sum()

    assert chisquare(counts[allowed], expected(tau)).pvalue > 1e-3
    # The test has power: the same counts clearly reject a softmax at another temperature.
    assert chisquare(counts[allowed], expected(tau * 1.5)).pvalue < 1e-6


def test_an_fp16_index_is_half_the_bytes_and_exact_over_what_it_stores() -> None:
    rng = np.random.default_rng(5)
    docs = _blobs(3000, 32, 40, 0.05, seed=5)
    queries = _unit(rng.normal(size=(30, 32)))
    full, half = (_snapshot(docs, queries, 50, dtype) for dtype in ("fp32", "fp16"))
    assert half.doc_emb.dtype == np.float16 and half.query_emb.dtype == np.float16
    assert half.doc_emb.nbytes * 2 == full.doc_emb.nbytes
    assert half.clusters.order.dtype == np.int32  # no (N,) int64 arrays left to travel
    stored = half.doc_emb.astype(np.float32)
    c, index = half.clusters, NegativeIndex(half)
    for i in range(len(queries)):
        q = half.query_emb[i].astype(np.float32)
        # The bounds hold for the stored values: no doc scores above its cluster's bound.
        bound = c.centroids @ q + np.linalg.norm(q) * c.radius
        assert np.all(stored @ q <= bound[c.assignment()] + 1e-6)
        want = [int(j) for j in np.argsort(-(stored @ q), kind="stable")[:10]]
        assert index.top(f"q{i}", 10) == want
    # Against fp32 the top-10 differ only where rounding swaps near-ties.
    overlap = np.mean(
        [
            len(set(index.top(f"q{i}", 10)) & set(NegativeIndex(full).top(f"q{i}", 10))) / 10
            for i in range(len(queries))
        ]
    )
    assert overlap >= 0.9


def test_nprobe_is_exact_within_the_probed_clusters_and_bounds_its_distance() -> None:
    """The approximate index: top-k and the softmax restricted to the ``nprobe`` clusters with
    the highest bounds, exactly; the reported bound caps the draw's total-variation distance
    from the exact softmax over the whole corpus."""
    rng = np.random.default_rng(11)
    docs = _blobs(400, 8, 6, 0.5, seed=11)
    queries = _unit(rng.normal(size=(3, 8)))
    snap = _snapshot(docs, queries, 12)
    c, judged, tau = snap.clusters, {0, 1}, 0.3
    assert NegativeIndex(snap, nprobe=len(c.sizes)).top("q0", 10) == NegativeIndex(snap).top(
        "q0", 10
    )
    index = NegativeIndex(snap, nprobe=3)
    q = snap.query_emb[0]
    bound = c.centroids @ q + np.linalg.norm(q) * c.radius
    probed = np.isin(c.assignment(), np.argsort(-bound, kind="stable")[:3])
    scores = (docs @ q).astype(np.float64)
    inside = [int(j) for j in np.argsort(-scores, kind="stable") if probed[j] and j not in judged]
    assert index.top("q0", 10, exclude=judged) == inside[:10]
    # Deeper than the probed clusters hold, it is the probed docs only, not the exact top.
    deep = index.top("q0", 60, exclude=judged)
    assert deep == inside[:60] != NegativeIndex(snap).top("q0", 60, judged)
    draws, trials = np.random.default_rng(5), 8000
    counts = np.zeros(len(docs))
    for _ in range(trials):
        counts[index.sample("q0", 1, tau, draws, judged)[0]] += 1
    allowed = probed & ~np.isin(np.arange(len(docs)), list(judged))
    assert counts[~allowed].sum() == 0  # nothing from an unprobed cluster
    w = np.exp((scores - scores.max()) / tau) * allowed
    assert chisquare(counts[allowed], trials * w[allowed] / w.sum()).pvalue > 1e-3
    everywhere = np.exp((scores - scores.max()) / tau) * ~np.isin(np.arange(len(docs)), [0, 1])
    tv = 1 - everywhere[allowed].sum() / everywhere.sum()  # the restriction's whole error
    assert 0 < tv <= index.last_tv_bound < 1


def test_sample_draws_distinct_unjudged_docs_and_refuses_impossible_counts() -> None:
    docs = _blobs(30, 8, 3, 0.3, seed=2)
    index = NegativeIndex(_snapshot(docs, docs[:2], 4))
    rng = np.random.default_rng(0)
    judged = set(range(10))
    got = index.sample("q0", 20, 0.05, rng, exclude=judged)
    assert len(set(got)) == 20 and not set(got) & judged
    with pytest.raises(RaydrError, match="21 negatives asked for, but only 20 unjudged"):
        index.sample("q0", 21, 0.05, rng, exclude=judged)


def test_rejection_branch_never_draws_a_doc_twice() -> None:
    """Pins the duplicate check of the rejection branch (unprobed clusters): the test above
    probes every doc, so only this one notices a sampler that accepts a doc it already drew."""
    docs = _blobs(40, 8, 4, 0.3, seed=2)
    queries = _unit(np.random.default_rng(3).normal(size=(4, 8)))
    index = NegativeIndex(_snapshot(docs, queries, 5))
    judged = set(range(5))
    n = 25  # of 35 unjudged docs: most must come from the unprobed clusters, many twice proposed
    c = index.snapshot.clusters
    for i, q in enumerate(queries):
        first = np.argmax(c.centroids @ q + np.linalg.norm(q) * c.radius)  # the one probed
        assert n > c.sizes[first]  # so the rejection branch has to draw
        rng = np.random.default_rng(i)
        got = index.sample(f"q{i}", n, 1.0, rng, exclude=judged, slack=1e9)
        assert len(got) == n and len(set(got)) == n, f"q{i}: a doc drawn twice"
        assert not set(got) & judged


# -------------------------------------------------------------------------------- bad input


def _dynamic_tree(tmp_path, dataset, model, **mining) -> dict:
    from conftest import tiny_tree

    return {
        **tiny_tree("dyn", tmp_path, dataset, model),
        "training": {
            "split": "test",
            "group_size": 2,
            "batch_size": 1,
            "num_workers": 1,
            "mining": {"source": "dynamic", **mining},
        },
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"training.mining.refresh_every": 0},
            r"training\.mining\.refresh_every: .*greater than 0",
        ),
        (
            {"training.mining.refresh_every": -5},
            r"training\.mining\.refresh_every: .*greater than 0",
        ),
        ({"validation.enabled": False}, r"mining\.source 'dynamic' needs the validator pool"),
        ({"validation.mode": "inline"}, r"mining\.source 'dynamic' needs the validator pool"),
        ({"training.group_size": 1}, r"mining\.source 'dynamic' .* needs group_size >= 2"),
        (
            {"training.group_size": 4, "training.mining.depth": 2},
            r"mining\.depth=2 is smaller than the 3 negatives per query",
        ),
    ],
)
def test_bad_mining_config_is_one_error_naming_the_field(
    tmp_path, tiny_dataset, tiny_model_dir, change: dict, message: str
) -> None:
    from raydr import config

    tree = _dynamic_tree(tmp_path, tiny_dataset, tiny_model_dir)
    for dotted, value in change.items():
        config._set_dotted(tree, dotted, value, "test")
    with pytest.raises(RaydrError, match=message):
        config.build(tree, "job.yaml")


def test_more_landmarks_than_corpus_docs_is_refused_before_training(
    tmp_path, tiny_dataset, tiny_model_dir
) -> None:
    from raydr import config
    from raydr.training.preflight import preflight

    ok = config.build(_dynamic_tree(tmp_path, tiny_dataset, tiny_model_dir, landmarks=40), "t")
    preflight(ok)  # 40 docs: exactly the corpus is fine, and no BM25 table is needed
    bad = config.build(_dynamic_tree(tmp_path, tiny_dataset, tiny_model_dir, landmarks=41), "t")
    with pytest.raises(RaydrError, match=r"landmarks=41 is larger than the training corpus \(40"):
        preflight(bad)
    # An index that does not fit the corpus: 41 clusters of 40 docs, 7 probes of √40 = 6.
    for field, value, message in (
        ("clusters", 41, r"mining\.clusters=41 is larger than the training corpus \(40 docs"),
        ("nprobe", 7, r"mining\.nprobe=7 exceeds the index's 6 clusters"),
    ):
        tree = _dynamic_tree(tmp_path, tiny_dataset, tiny_model_dir, **{field: value})
        with pytest.raises(RaydrError, match=message):
            preflight(config.build(tree, "t"))
    # Token lengths past the model's positions: named before any worker loads the weights.
    tree = _dynamic_tree(tmp_path, tiny_dataset, tiny_model_dir)
    tree["model"]["passage_max_length"] = 129
    with pytest.raises(
        RaydrError, match=r"model\.passage_max_length=129, but .* has 128 positions"
    ):
        preflight(config.build(tree, "t"))


def test_tune_searches_the_negative_source_and_checks_every_candidate(
    tmp_path, tiny_dataset, tiny_model_dir
) -> None:
    from raydr import config
    from raydr.tuning.space import parse_space

    tree = _dynamic_tree(tmp_path, tiny_dataset, tiny_model_dir)
    tree["training"]["mining"]["source"] = "bm25"
    tree["tune"] = {
        "space": {
            "training.mining.source": {"choice": ["bm25", "dynamic"]},
            "training.mining.landmarks": {"grid": [0, 16]},
            "training.mining.sampling": {"choice": ["topk", "softmax"]},
        }
    }
    assert set(parse_space(config.build(tree, "t"))) == set(tree["tune"]["space"])
    tree["validation"] = {"mode": "inline"}  # a dynamic candidate would have no pool
    with pytest.raises(RaydrError, match=r"mining\.source: value 'dynamic' is not valid"):
        parse_space(config.build(tree, "t"))


def test_the_pool_plans_refreshes_and_never_publishes_an_older_index_over_a_newer() -> None:
    from raydr.config import MiningConfig
    from raydr.mining.publisher import Publication

    state = Publication(MiningConfig(refresh_every=30, landmarks=8))
    assert [state.plan(s) for s in (10, 20, 30, 40, 70)] == [
        "nystrom",
        "nystrom",
        "refresh",
        "nystrom",
        "refresh",
    ]
    assert Publication(MiningConfig(refresh_every=30, landmarks=0)).plan(10) is None
    # Two validators: the step-40 correction finishes before the step-30 refresh it follows.
    state.publish(40, "index-40", "nystrom")
    state.publish(30, "index-30", "refresh")
    assert state.published == (40, "index-40")  # readers keep the newer index
    assert state.base == (30, "index-30")  # the refresh still becomes what Nyström corrects


def test_a_refresh_goes_block_by_block_without_copying_the_index(monkeypatch) -> None:
    from raydr.mining import dynamic

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 16)).astype(np.float16)  # > 256 per centroid: a sampled fit
    one = dynamic.refresh(0, emb, ["q"], emb[:1].astype(np.float32), 4, seed=1)
    assert np.shares_memory(one.doc_emb, emb)  # already fp16: stored as it is
    monkeypatch.setattr(dynamic, "BLOCK", 7)
    blocks = dynamic.refresh(0, emb, ["q"], emb[:1].astype(np.float32), 4, seed=1)
    for name in ("order", "offsets", "centroids", "radius"):
        np.testing.assert_array_equal(getattr(one.clusters, name), getattr(blocks.clusters, name))
    # The radii bound every member, from the stored values.
    c = blocks.clusters
    dist = np.linalg.norm(emb.astype(np.float32) - c.centroids[c.assignment()], axis=1)
    assert (dist <= c.radius[c.assignment()]).all()
