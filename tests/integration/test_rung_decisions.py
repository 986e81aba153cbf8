"""Early stopping that does not depend on the machine's speed, on a real local Ray.

The validator is slowed to take two checkpoint intervals per checkpoint, in training steps
rather than seconds (it waits until the trial's checkpoint two intervals on exists), and
training steps are slowed so that Tune's own latency is small beside a step. The same tiny
search (a learning trial, then a frozen one; ASHA rungs at steps 8 and 16 of 20) runs under
each policy:

- by default the trial's courier hands the metric to ASHA as the pool records it, and the
  trial is stopped within one checkpoint interval (a metric riding the next checkpoint report,
  as raydr once delivered them, let it run to its end);
- ``rung_wait=until_validated``: the trial waits at the rung and is stopped there.

When the frozen trial is stopped its later checkpoints are still queued behind the slow
validator: ``tune.stopped_checkpoints=finish`` validates them, ``cancel`` closes them as
cancelled; under both, each checkpoint gets exactly one closing row.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import ray
from conftest import tiny_search_tree

from raydr import config

pytestmark = pytest.mark.ray

DELAYS: Path | None = None  # JSON: how the setup hook slows validators and training steps


def _slow_down() -> None:
    """Ray worker setup hook. A validator waits, before validating the checkpoint of step s,
    until its trial's checkpoint of step min(s + ahead, last) exists (at most ``max_s``);
    optimizer steps sleep ``step_s`` first. Fault injection: encoder, training and Ray stay real."""
    import json as _json
    import time as _time

    import torch

    from raydr.training import checkpoint
    from raydr.validation.validator import Validator

    if getattr(Validator.stream, "slowed", False):
        return
    real_stream, real_step, delays = Validator.stream, torch.optim.AdamW.step, DELAYS

    def stream(self, path, step, *args, **kwargs):
        wait = _json.loads(delays.read_text())
        target = min(step + wait["ahead"], wait["last"])
        later = Path(path).parent / checkpoint.dir_name(target)
        deadline = _time.monotonic() + wait["max_s"]
        while target > step and not later.is_dir() and _time.monotonic() < deadline:
            _time.sleep(0.05)
        yield from real_stream(self, path, step, *args, **kwargs)

    def step(self, *args, **kwargs):
        _time.sleep(_json.loads(delays.read_text())["step_s"])
        return real_step(self, *args, **kwargs)

    stream.slowed = True
    Validator.stream = stream
    torch.optim.AdamW.step = step


@pytest.fixture(scope="module")
def slow_ray(tmp_path_factory):
    global DELAYS
    DELAYS = tmp_path_factory.mktemp("delays") / "delays.json"
    # Checkpoints every 4 steps: "two intervals" is 8 steps ahead.
    DELAYS.write_text(json.dumps({"ahead": 8, "last": 20, "max_s": 6.0, "step_s": 0.5}))
    # The hook travels by value (with DELAYS): workers cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        num_gpus=1,
        object_store_memory=150 * 1024**2,
        # With the dashboard, as raydr starts Ray: Train V2's placement-group cleaner asks its
        # State API whether a stopped trial's controller is gone; without it the group leaks.
        runtime_env={"worker_process_setup_hook": _slow_down},
    )
    yield
    ray.shutdown()


def _search(
    tmp_path: Path, dataset: Path, model: Path, negatives: Path, caplog, tracking=None, **tune
) -> dict:
    from raydr.tuning.search import run_search

    name = "rung-" + ("-".join(str(v) for v in tune.values()) or "default")
    tree = tiny_search_tree(name, tmp_path, dataset, model, negatives)
    del tree["ray"]  # the module's Ray, slowed
    if tracking:
        tree["tracking"] = tracking
    # A learning trial first, so ASHA has its rung metrics when the frozen one runs.
    tree["tune"].update(search_alg="grid", **tune)
    tree["tune"]["scheduler"]["grace_period"] = 8
    with caplog.at_level(logging.WARNING):
        summary = run_search(config.build(tree, "t"))
    _resources_returned()
    # This Ray serves the State API, so stopped trials give their resources back: no warning.
    assert not [r for r in caplog.records if "State API" in r.getMessage()]
    assert summary["rung_checkpoints"] == [8, 16]
    trials = {t["config"]["training.lr"]: t for t in summary["trials"]}
    assert all(t["error"] is None for t in trials.values())
    assert trials[3e-3]["stopped_early"] is False
    assert trials[3e-3]["cancelled_checkpoints"] == 0, "the kept trial lost a validation"
    trials["summary"] = summary
    trials["closing"] = _closing_rows(tmp_path / "runs" / name / "validation" / "ledger.jsonl")
    return trials


def _closing_rows(ledger: Path) -> dict[tuple[str, int], list[str]]:
    """Every checkpoint taken in → the statuses of its closing rows (exactly one each)."""
    from raydr.validation.ledger import CLOSED, Ledger

    closing: dict[tuple[str, int], list[str]] = {}
    for row in Ledger(ledger).rows():
        key = (row["trial"], row["step"])
        closing.setdefault(key, [])
        if row["status"] in CLOSED:
            closing[key].append(row["status"])
    assert all(len(statuses) == 1 for statuses in closing.values()), closing
    return closing


def _resources_returned(timeout_s: float = 30.0) -> None:
    """After a search, stopped trials included: every resource is back, no placement group
    or raydr actor is left (Ray's bug ray-project/ray#54305 leaks them when Tune stops Train V2 trials)."""
    import time

    from ray.util import placement_group_table

    deadline = time.monotonic() + timeout_s
    while True:
        live = {k: v for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
        live.update(
            (a["name"], a)
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "raydr"
        )
        free, total = ray.available_resources(), ray.cluster_resources()
        short = {
            k: total[k] - free.get(k, 0) for k in ("CPU", "GPU") if free.get(k, 0) < total[k] - 1e-6
        }
        if not live and not short:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"leaked: placement groups {live}; resources still held {short}")
        time.sleep(0.5)


def test_on_landing_delivery_stops_it_within_one_interval(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path, caplog
) -> None:
    trials = _search(tmp_path, tiny_dataset, tiny_model_dir, negatives, caplog)
    frozen = trials[1e-9]
    assert frozen["stopped_early"] is True and frozen["decided_on_step"] == 8, frozen
    # The rung-8 metric landed two intervals on (at step 16); the stop came before the next
    # checkpoint: at most one interval after the metric landed, never at the end.
    assert 16 <= frozen["last_training_step"] < 20, frozen
    assert frozen["decision_lag_steps"][8] < 12, frozen
    # stopped_checkpoints=finish (the default): its queued checkpoints were validated anyway.
    mine = {s: v for (t, s), v in trials["closing"].items() if t == frozen["trial"]}
    assert mine and all(v == ["done"] for v in mine.values()), mine
    assert 16 in mine and trials["summary"]["validation"]["cancelled"] == 0


def test_cancel_closes_the_stopped_trials_queued_checkpoints_as_cancelled(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path, caplog
) -> None:
    trials = _search(
        tmp_path,
        tiny_dataset,
        tiny_model_dir,
        negatives,
        caplog,
        stopped_checkpoints="cancel",
    )
    frozen, work = trials[1e-9], trials["summary"]["validation"]
    assert frozen["stopped_early"] is True, frozen
    mine = {s: v[0] for (t, s), v in trials["closing"].items() if t == frozen["trial"]}
    # When it was stopped (step 16-19), the one validator was busy with its step-12 or step-16
    # checkpoint (that one finished) and the other was queued behind it: cancelled.
    assert mine[8] == "done" and sorted([mine[12], mine[16]]) == ["cancelled", "done"], mine
    assert frozen["cancelled_checkpoints"] == sum(v == "cancelled" for v in mine.values())
    # The summary counts exactly the ledger's cancelled rows (this search's one), and prices
    # each at the mean validator-seconds of a done checkpoint.
    every = [v[0] for v in trials["closing"].values()]
    assert work["stopped_checkpoints"] == "cancel", work
    assert work["cancelled"] == every.count("cancelled") == 1, (work, trials["closing"])
    assert work["done"] == every.count("done"), work
    mean = work["validator_seconds"] / work["done"]
    assert work["validator_seconds_saved_estimate"] == pytest.approx(mean), work


def test_rung_wait_stops_it_at_the_rung(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path, caplog
) -> None:
    trials = _search(
        tmp_path,
        tiny_dataset,
        tiny_model_dir,
        negatives,
        caplog,
        tracking={"backend": "wandb"},  # offline, a W&B run per trial through Ray's callback
        rung_wait="until_validated",
    )
    frozen, learner = trials[1e-9], trials[3e-3]
    assert frozen["stopped_early"] is True and frozen["decided_on_step"] == 8, frozen
    assert frozen["last_training_step"] == 8, "it trained past the rung it was stopped at"
    assert frozen["decision_lag_steps"] == {8: 0}
    # The learning trial paused at both rungs and went on after each decision.
    assert learner["decision_lag_steps"] == {8: 0, 16: 0}, learner
    # W&B: each trial's offline run holds its lr, and every validated metric it reported
    # paired with its checkpoint's step as the ledger has it.
    from raydr.testing import wandb_records as wr
    from raydr.validation.ledger import Ledger

    run_dir = tmp_path / "runs" / "rung-until_validated"
    done = {
        (r["trial"], r["step"]): r["metrics"]["nDCG@10"] for r in Ledger.find(run_dir).results()
    }
    for trial in (frozen, learner):
        path = wr.run_file(run_dir, trial["trial"])
        assert wr.runs(path)[0]["run_group"] == "rung-until_validated"
        assert wr.config(path)["training.lr"] == trial["config"]["training.lr"]
        seen = [(r["validated_step"], r["nDCG@10"]) for r in wr.history(path) if "nDCG@10" in r]
        assert seen and all(value == done[(trial["trial"], s)] for s, value in seen), seen
