"""The search space: ``tune.space`` parsed into Tune domains, every error found before a trial
runs, and the metric the scheduler reads checked against what the validators produce."""

from __future__ import annotations

import copy
import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from raydr.config import RaydrConfig
from raydr.errors import RaydrError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


def _leaf_paths(model: type[BaseModel] = RaydrConfig, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def with_value(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    new = copy.deepcopy(tree)
    node = new
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return new


def parse_space(cfg: RaydrConfig) -> dict[str, Any]:
    """``tune.space`` → ``{dotted field: tune domain}``; every error is found before a trial runs."""
    from ray import tune

    leaves = set(_leaf_paths()) - {"tune.space"}
    base = cfg.model_dump(mode="json")
    domains: dict[str, Any] = {}
    if not cfg.tune.space:
        raise RaydrError("tune.space is empty: name at least one config field to search")
    for dotted, spec in cfg.tune.space.items():
        where = f"tune.space.{dotted}"
        if dotted not in leaves:
            close = difflib.get_close_matches(dotted, sorted(leaves), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RaydrError(f"{where}: no such config field{hint}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise RaydrError(
                f"{where}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: ..., got {spec!r}"
            )
        kind, arg = next(iter(spec.items()))
        if kind in {"choice", "grid"}:
            if not isinstance(arg, list) or not arg:
                raise RaydrError(f"{where}: {kind} needs a non-empty list of values, got {arg!r}")
            candidates = list(arg)
            domains[dotted] = tune.choice(arg) if kind == "choice" else tune.grid_search(arg)
        else:
            ok = (
                isinstance(arg, list)
                and len(arg) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
                and arg[0] < arg[1]
                and (kind != "loguniform" or arg[0] > 0)
            )
            if not ok:
                need = "0 < low < high" if kind == "loguniform" else "low < high"
                raise RaydrError(f"{where}: {kind} needs [low, high] with {need}, got {arg!r}")
            candidates = [arg[0], arg[1] - (1 if kind == "randint" else 0)]
            domains[dotted] = getattr(tune, kind)(*arg)
        for value in candidates:  # the field's own type and bounds apply to every candidate
            try:
                RaydrConfig.model_validate(with_value(base, dotted, value))
            except ValidationError as exc:
                msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise RaydrError(f"{where}: value {value!r} is not valid: {msg}") from None
    if cfg.tune.search_alg == "grid":
        sampled = [k for k, spec in cfg.tune.space.items() if next(iter(spec)) != "grid"]
        if sampled:
            raise RaydrError(
                f"tune.search_alg=grid runs a grid, but tune.space.{sampled[0]} is sampled "
                f"({next(iter(cfg.tune.space[sampled[0]]))}); make it a grid or use "
                f"search_alg=random"
            )
    return domains


def check_metric(cfg: RaydrConfig) -> str:
    metric = cfg.tune.metric or cfg.eval.primary_metric
    if metric not in cfg.eval.metrics:
        raise RaydrError(
            f"tune.metric {metric!r} is not produced by the validators (eval.metrics: "
            f"{', '.join(cfg.eval.metrics)})"
        )
    return metric


def apply(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``base`` config tree with each dotted ``params`` field set (a trial's config)."""
    tree = copy.deepcopy(base)
    for dotted, value in params.items():
        tree = with_value(tree, dotted, value)
    return tree
