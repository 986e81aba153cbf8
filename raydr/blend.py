"""Weight-space ensembles of a run's checkpoints, chosen on dev: ``raydr best --mix`` and
``--soup``.

- **A mix** (WiSE-FT, Wortsman et al. 2022): θ = (1−α)·θ_base + α·θ_fine-tuned, with the base
  the model the run started from. α = 1 is the checkpoint, α = 0 the base; in between keeps
  more of what the base knew off the training corpus. ``auto`` scores a grid of α on dev and
  takes the smallest α within one standard error of dev's best (per-query, paired): dev comes
  from the training corpus, so it cannot reward what the base knows elsewhere, and among the
  choices it cannot tell apart the one nearest the base is the safer one off that corpus.
- **A soup** (Wortsman et al. 2022, "model soups"): the uniform average of the kept
  checkpoints, or the greedy one: checkpoints in order of their validation metric, each kept
  only where the average with it scores no lower on dev.

Every candidate is scored as the validators score: the run's validation split over the run's
saved corpus subset (``raydr evaluate --subset``), or the whole validation split where the run
saved none. Test is never read here. The blend is written with ``training.checkpoint.blend``,
so it loads as any checkpoint does (``transformers``, ``sentence-transformers``, ``raydr
evaluate --model``); encoding costs the same as before.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raydr.errors import RaydrError

log = logging.getLogger(__name__)

GRID = tuple(round(0.1 * i, 1) for i in range(11))  # α candidates for ``--mix auto``


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise RaydrError(f"--mix: expected α in [0, 1] (or auto), got {alpha}")
    return alpha


class DevScorer:
    """Scores a model folder on a run's dev set, as its validators did. ``subset``: the file of
    the run's saved subset (None or absent: the whole validation split)."""

    def __init__(self, checkpoint: str | Path, metric: str, subset: Path | None) -> None:
        from raydr import config
        from raydr.training.checkpoint import META, read
        from raydr.validation.sampling import read_subset

        cfg = config.build(read(checkpoint).config, str(Path(checkpoint) / META))
        self.scratch = Path(tempfile.mkdtemp(prefix="raydr-blend-"))
        # Its outputs go to scratch; the data split is dev, never the job's test split.
        measures = cfg.eval.metrics if metric in cfg.eval.metrics else [*cfg.eval.metrics, metric]
        self.cfg = cfg.model_copy(
            update={
                "output_dir": self.scratch,
                "data": cfg.data.model_copy(update={"split": cfg.validation.split}),
                "eval": cfg.eval.model_copy(
                    update={"write_run": False, "metrics": measures, "primary_metric": metric}
                ),
            }
        )
        self.metric = metric
        self.subset = read_subset(subset) if subset is not None and subset.is_file() else None
        if cfg.validation.also:
            log.warning(
                "the run also validated on %s; --mix auto and greedy soups choose on "
                "validation.split alone",
                ", ".join(c.label() for c in cfg.validation.also),
            )
        self.per_query: dict[str, dict[str, float]] = {}  # label → {query id: value}

    @property
    def where(self) -> str:
        docs = f"its {len(self.subset)}-doc subset" if self.subset else "the whole corpus"
        return f"{self.cfg.data.path} split {self.cfg.validation.split!r} over {docs}"

    def __call__(self, model: Path, label: str) -> float:
        from raydr.evaluate import evaluate

        result = evaluate(self.cfg, model_path=str(model), progress=False, subset=self.subset)
        if self.metric not in result.metrics:
            raise RaydrError(
                f"--metric {self.metric!r}: evaluation reports {sorted(result.metrics)}"
            )
        score = float(result.metrics[self.metric])
        self.per_query[label] = result.per_query
        log.info("dev %s %s = %.4f", label, self.metric, score)
        return score

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def mix(
    checkpoint: str | Path,
    alpha: float | str,
    out: str | Path,
    scorer: DevScorer | None = None,
    grid: Sequence[float] = GRID,
) -> dict[str, Any]:
    """Write (1−α)·base + α·``checkpoint`` at ``out``; ``alpha="auto"``: the grid's best on
    dev (``scorer``). → the blend's record."""
    from raydr.retrieval.significance import within_one_standard_error
    from raydr.training.checkpoint import base_model, blend

    checkpoint, out = Path(checkpoint), Path(out)
    base = base_model(checkpoint)
    record: dict[str, Any] = {"kind": "wise-ft", "fine_tuned": str(checkpoint), "base": base}
    if alpha == "auto":
        if scorer is None:
            raise ValueError("--mix auto needs a dev scorer")
        scores = {}
        for a in sorted(grid):
            candidate = scorer.scratch / f"mix-{a}"
            blend([checkpoint, base], [check_alpha(a), 1.0 - a], candidate, record)
            scores[a] = scorer(candidate, f"alpha={a}")
            shutil.rmtree(candidate)
        best = max(scores, key=lambda a: (scores[a], a))
        per = {a: scorer.per_query[f"alpha={a}"] for a in scores}
        # Of the α that dev cannot tell from its best, the one nearest the base: it keeps the
        # most of what the base knew off this corpus, which dev (from the same corpus) cannot see.
        alpha = min(a for a in scores if within_one_standard_error(per[best], per[a]))
        record["dev"] = {
            "on": scorer.where,
            "metric": scorer.metric,
            "by_alpha": scores,
            "best_alpha": best,
            "rule": "the smallest alpha within one standard error (per query) of dev's best",
        }
    alpha = check_alpha(float(alpha))
    record["alpha"] = alpha
    blend([checkpoint, base], [alpha, 1.0 - alpha], out, record)
    return record


def soup(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    kind: str,
    scorer: DevScorer | None = None,
) -> dict[str, Any]:
    """A uniform or greedy soup of ``checkpoints`` (greedy: best validated first) at ``out``.
    → the blend's record."""
    from raydr.training.checkpoint import blend

    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise RaydrError("--soup: the run keeps no checkpoint to blend")
    record: dict[str, Any] = {"kind": f"{kind}-soup"}
    if kind == "uniform":
        chosen = paths
    elif kind == "greedy":
        if scorer is None:
            raise ValueError("a greedy soup needs a dev scorer")
        chosen, best = [paths[0]], scorer(paths[0], paths[0].name)
        tried = [{"added": paths[0].name, scorer.metric: best, "kept": True}]
        for path in paths[1:]:
            candidate = scorer.scratch / "soup"
            blend([*chosen, path], _uniform(len(chosen) + 1), candidate, record)
            score = scorer(candidate, f"+{path.name}")
            shutil.rmtree(candidate)
            kept = score >= best
            tried.append({"added": path.name, scorer.metric: score, "kept": kept})
            if kept:
                chosen, best = [*chosen, path], score
        record["dev"] = {"on": scorer.where, "metric": scorer.metric, "greedy": tried}
    else:
        raise RaydrError(f"--soup: expected uniform or greedy, got {kind!r}")
    record["ingredients"] = [str(p) for p in chosen]
    blend(chosen, _uniform(len(chosen)), out, record)
    return record


def _uniform(n: int) -> list[float]:
    return [1.0 / n] * n


def kept_checkpoints(rows: Sequence[dict[str, Any]], metric: str) -> list[Path]:
    """The ledger's validated checkpoints still on disk, best ``metric`` first."""
    from raydr.training.checkpoint import is_complete

    scored = [r for r in rows if metric in (r.get("metrics") or {})]
    scored.sort(key=lambda r: (-r["metrics"][metric], r["step"]))
    seen, out = set(), []
    for row in scored:
        path = Path(row["checkpoint"])
        if path not in seen and is_complete(path):
            seen.add(path)
            out.append(path)
    return out


def describe(record: dict[str, Any]) -> str:
    """One line per dev score the choice saw, then what was written."""
    dev = record.get("dev") or {}
    lines = [f"chosen on {dev['on']} ({dev['metric']})"] if dev else []
    for a, score in (dev.get("by_alpha") or {}).items():
        mark = " (dev's best)" if a == dev.get("best_alpha") else ""
        lines.append(f"  alpha {a:.2f}: {score:.4f}{mark}")
    for step in dev.get("greedy") or []:
        mark = "kept" if step["kept"] else "dropped"
        lines.append(f"  {step['added']}: {step[dev['metric']]:.4f} ({mark})")
    what = {k: v for k, v in record.items() if k in {"kind", "alpha", "ingredients"}}
    lines.append(json.dumps(what))
    return "\n".join(lines)
