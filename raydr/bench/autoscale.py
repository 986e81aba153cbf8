"""``raydr bench autoscale``: a search on a cluster that Ray's own autoscaler grows and shrinks.

Starts a fake autoscaling cluster shaped like ``cluster/aws.yaml`` (a CPU head; a training node
type and a validator node type, both ``min_workers: 0``; see ``raydr.testing.fake_cluster``) and
runs the config's search on it, every trial one worker on its own training node, validators
sharing one validator node. Every ``--every`` seconds it samples the nodes per type and the
live Train workers. Reported: the time to the first and the peak node of each type, how long
nodes outlived the workers that needed them (each time workers stopped, the seconds until the
training nodes came down to match), the scale-down after the search, what was left (nothing,
or it says what), and node-seconds against a fixed cluster of the peak size for the same wall
time (the baseline, from the same run). Writes JSON and a PNG of the node counts over time.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

from raydr.verb import Verb

TRAIN, VAL = "train_gpu", "val_gpu"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="search job YAML (with a tune section)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument(
        "--train-nodes",
        type=int,
        default=3,
        help="the training type's max_workers, and how many trials may run at once",
    )
    p.add_argument("--idle-timeout-s", type=float, default=5.0, help="the autoscaler's")
    p.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--out", type=Path, default=Path("bench-out/autoscale.json"))


def node_types(train_nodes: int) -> dict[str, dict[str, Any]]:
    """aws.yaml in small: up to ``train_nodes`` 1-CPU training nodes (one per running trial);
    one validator node whose (logical) GPU two 0.25-GPU validators share."""
    from raydr.testing.fake_cluster import node_type

    return {
        TRAIN: node_type({"CPU": 1, "train_node": 1}, max_workers=train_nodes),
        VAL: node_type({"CPU": 1, "GPU": 1, "val_node": 1}, max_workers=1),
    }


def overrides(address: str, train_nodes: int) -> list[str]:
    """What pins the search to the node types, whatever the config says."""
    return [
        f"ray.address={address}",
        "training.num_workers=1",
        "training.resources_per_worker={CPU: 1, train_node: 1}",
        "validation.num_actors=2",
        "validation.num_cpus=0.5",
        "validation.num_gpus=0.25",
        "validation.resources={val_node: 0.25}",
        f"tune.max_concurrent_trials={train_nodes}",
    ]


def _workers(address: str) -> int:
    from ray.util.state import list_actors

    alive = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        limit=1000,
        raise_on_missing_output=False,
    )
    return len(alive)


def _leftovers(address: str) -> dict[str, int]:
    from ray.util.state import list_actors, list_placement_groups

    alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    ours = ("ValidationPool", "Validator", "RayTrainWorker", "TrainController")
    return {
        "raydr_and_train_actors": sum(a.class_name in ours for a in alive),
        "placement_groups": sum(
            p.state != "REMOVED"
            for p in list_placement_groups(address=address, detail=True, limit=1000)
        ),
    }


def release_lags(samples: list[dict[str, Any]]) -> list[float]:
    """Each time the live Train workers fell, the seconds until the training nodes were no
    more than the workers left (capped at the last sample: never matched → the wait so far)."""
    lags = []
    for i in range(1, len(samples)):
        if samples[i]["workers"] >= samples[i - 1]["workers"]:
            continue
        start, need = samples[i]["t"], samples[i]["workers"]
        end = next((s["t"] for s in samples[i:] if s[TRAIN] <= max(need, s["workers"])), None)
        lags.append((end if end is not None else samples[-1]["t"]) - start)
    return lags


def main(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.errors import RaydrError
    from raydr.testing.fake_cluster import FakeAutoscalingCluster, node_counts
    from raydr.tuning.search import run_search

    if args.train_nodes < 1:
        raise RaydrError(f"--train-nodes={args.train_nodes}: expected at least 1")
    base = config.load(args.config, list(args.overrides))
    if not base.tune.space:
        raise RaydrError(f"{args.config}: no tune.space; this benchmark runs a search")
    types = node_types(args.train_nodes)
    cluster = FakeAutoscalingCluster(types, idle_timeout_s=args.idle_timeout_s)
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the fake head runs
    cluster.start()
    samples: list[dict[str, Any]] = []
    try:
        cfg = config.load(
            args.config,
            [
                *args.overrides,
                # Its own name each time: the same name would resume the last search.
                f"name={base.name}-autoscale-{int(time.time())}",
                *overrides(cluster.address, args.train_nodes),
            ],
        )
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        t0 = time.monotonic()
        done = {"search": None}

        def sample() -> None:
            counts = node_counts(types)
            samples.append(
                {"t": time.monotonic() - t0, **counts, "workers": _workers(cluster.address), **done}
            )

        halt = threading.Event()

        def loop() -> None:
            while not halt.is_set():
                # A State API call may time out under load: the next sample tells.
                with contextlib.suppress(Exception):
                    sample()
                halt.wait(args.every)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            summary = run_search(cfg)
        finally:
            searched = time.monotonic() - t0
            done["search"] = "over"
        # Scale-down: until no worker node is left (or a minute past the idle timeout).
        deadline = time.monotonic() + args.idle_timeout_s + 60
        while time.monotonic() < deadline:
            counts = node_counts(types)
            if counts[TRAIN] == 0 and counts[VAL] == 0:
                break
            time.sleep(0.5)
        halt.set()
        thread.join()
        sample()
        down = time.monotonic() - t0 - searched
        left = {
            **_leftovers(cluster.address),
            "worker_nodes": samples[-1][TRAIN] + samples[-1][VAL],
        }
    finally:
        ray.shutdown()
        cluster.stop()
    payload = _payload(args, cfg, types, summary, samples, searched, down, left)
    write_json(args.out, {"machine": machine(), **payload})
    plot(payload, args.out.with_suffix(".png"))
    for key in ("scale_up_s", "peak_nodes", "release_lag_s", "scale_down_s", "left_over"):
        print(f"{key}: {payload[key]}")
    print(f"node-seconds vs a fixed cluster of the peak size: {payload['node_seconds_ratio']:.2f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _payload(args, cfg, types, summary, samples, searched, down, left) -> dict[str, Any]:
    def first(kind: str, at_least: int = 1) -> float | None:
        return next((s["t"] for s in samples if s[kind] >= at_least), None)

    peak = {k: max((s[k] for s in samples), default=0) for k in (TRAIN, VAL, "workers")}
    # Node-seconds used (each worker node, while up) against a fixed cluster of the peak size.
    used = sum((b["t"] - a["t"]) * (a[TRAIN] + a[VAL]) for a, b in itertools.pairwise(samples))
    wall = samples[-1]["t"] if samples else 0.0
    fixed = (peak[TRAIN] + peak[VAL]) * wall
    return {
        "config": str(args.config),
        "overrides": [*args.overrides, *overrides("<fake head>", args.train_nodes)],
        "node_types": {
            k: v["resources"] | {"max_workers": v["max_workers"]} for k, v in types.items()
        },
        "idle_timeout_s": args.idle_timeout_s,
        "trials": [
            {
                "config": t["config"],
                "stopped_early": t["stopped_early"],
                "steps_run": t["last_training_step"],
                "error": t.get("error"),
            }
            for t in summary["trials"]
        ],
        "search_s": searched,
        "scale_up_s": {
            f"first {TRAIN}": first(TRAIN),
            f"first {VAL}": first(VAL),
            f"peak {TRAIN}": first(TRAIN, peak[TRAIN]) if peak[TRAIN] else None,
        },
        "peak_nodes": {TRAIN: peak[TRAIN], VAL: peak[VAL]},
        "peak_train_workers": peak["workers"],
        "release_lag_s": release_lags(samples),
        "scale_down_s": down,
        "left_over": left,
        "node_seconds": used,
        "node_seconds_fixed_peak_cluster": fixed,
        "node_seconds_ratio": used / fixed if fixed else None,
        "samples": samples,
    }


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr import atomic

    samples = payload["samples"]
    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(t, [s[TRAIN] for s in samples], where="post", label=f"{TRAIN} nodes", lw=2)
    ax.step(t, [s[VAL] for s in samples], where="post", label=f"{VAL} nodes", lw=2)
    ax.step(t, [s["workers"] for s in samples], where="post", label="Train workers", ls="--")
    ax.axvline(payload["search_s"], color="grey", ls=":", label="search over")
    stopped = sum(tr["stopped_early"] for tr in payload["trials"])
    ax.set(
        xlabel="seconds",
        ylabel="count",
        title=f"{len(payload['trials'])} trials ({stopped} stopped early), idle timeout "
        f"{payload['idle_timeout_s']:g} s",
    )
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", framealpha=0.9)
    fig.tight_layout()
    atomic.save_figure(fig, path)


VERBS = (
    Verb(
        "autoscale",
        "a search on a fake cluster run by Ray's autoscaler: nodes over time",
        add_arguments,
        main,
    ),
)
