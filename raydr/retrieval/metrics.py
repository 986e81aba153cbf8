"""IR metrics through ir-measures (trec_eval semantics). No metric maths is written here.

``score`` returns a flat ``{name: value}`` dict keyed by the measure names as the user wrote
them (``nDCG@10``), so the validator's primary metric and Tune's ``metric`` share one name.
"""

from __future__ import annotations

from collections.abc import Mapping

from raydr.config import EvalConfig, check_measures
from raydr.errors import RaydrError

Qrels = Mapping[str, Mapping[str, int]]  # query_id -> {doc_id: relevance}
Run = Mapping[str, Mapping[str, float]]  # query_id -> {doc_id: score}


def drop_identical_ids(run: Run) -> dict[str, dict[str, float]]:
    """BEIR/MTEB convention: a document whose id equals the query id is not a result."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def score(qrels: Qrels, run: Run, measures: list[str]) -> dict[str, float]:
    """Mean of each measure over the queries in ``qrels`` (trec_eval semantics).

    Queries in ``qrels`` that are missing from ``run`` count as zero, as in ``trec_eval -c``,
    so a validator that loses queries cannot look better than it is.
    """
    return {
        name: sum(values.values()) / len(values)
        for name, values in per_query(qrels, run, measures).items()
    }


def weighted_mean(
    parts: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
) -> dict[str, float]:
    """Several dev sets' flat metric dicts (``{label: {metric: value}}``) → one flat dict: each
    metric they all report as the ``weights``-weighted mean under its own name, and every part
    as ``METRIC/LABEL``, so a scheduler and ``raydr best`` read one primary metric."""
    names = [m for m in next(iter(parts.values())) if all(m in p for p in parts.values())]
    total = sum(weights[label] for label in parts)
    out = {m: sum(weights[lb] * parts[lb][m] for lb in parts) / total for m in names}
    out.update({f"{m}/{label}": values[m] for label, values in parts.items() for m in names})
    return out


def per_query(qrels: Qrels, run: Run, measures: list[str]) -> dict[str, dict[str, float]]:
    """``{measure: {query_id: value}}`` for every query in ``qrels`` (absent from ``run``: 0,
    as ``trec_eval -c``): what a paired significance test compares."""
    import ir_measures

    if not qrels:
        raise RaydrError("no judged queries to score (qrels are empty)")
    parsed = check_measures(measures)
    full_run = {q: dict(run.get(q, {})) for q in qrels}
    found: dict[str, dict[str, float]] = {str(m): {} for m in parsed}
    for metric in ir_measures.iter_calc(parsed, qrels, full_run):
        found[str(metric.measure)][metric.query_id] = metric.value
    # ir-measures omits queries with an empty run; trec_eval -c scores them 0.
    return {
        name: {q: found[str(m)].get(q, 0.0) for q in qrels}
        for name, m in zip(measures, parsed, strict=True)
    }


def read_trec_run(path) -> dict[str, dict[str, float]]:
    """A TREC run file (``qid Q0 docid rank score tag`` lines) → ``{qid: {docid: score}}``;
    a malformed line is one error naming the file and line."""
    run: dict[str, dict[str, float]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    qid, _, did, _, value = fields[:5]
                    run.setdefault(qid, {})[did] = float(value)
                except ValueError:
                    raise RaydrError(
                        f"{path}:{number}: expected 'QID Q0 DOCID RANK SCORE TAG', got {line.strip()!r}"
                    ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RaydrError(f"{path}: cannot read the run file ({exc})") from None
    if not run:
        raise RaydrError(f"{path}: an empty run file")
    return run


def score_run(
    qrels: Qrels, run: Run, cfg: EvalConfig
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score a run as every raydr command does (``cfg.metrics``, BEIR's identical-id rule).

    → (metrics, the run as scored), so a written run file matches the metrics."""
    scored = (
        drop_identical_ids(run)
        if cfg.ignore_identical_ids
        else {q: dict(d) for q, d in run.items()}
    )
    return score(qrels, scored, cfg.metrics), scored


def write_trec_run(path, run: Run, tag: str = "raydr") -> None:
    """Write a TREC run file atomically, ranks by descending score."""
    from raydr.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, s) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {did} {rank} {s:.6f} {tag}\n")
