"""Experiment tracking in Weights & Biases, through Ray's own integrations
(``tracking.backend: wandb``).

W&B wants one writing process per run, so one ``raydr train`` is a W&B *group* named after the
job, with one run for each process that has something to say (W&B's recipe for distributed
jobs), each holding the whole config:

- ``NAME`` (the driver): the selected checkpoint, exported, as a ``model`` artifact;
- ``NAME/train`` (rank 0, through Ray's ``setup_wandb``): every report, at its step;
- ``NAME/validation`` (the validation pool): every row it closes, ``validation/<metric>``
  plotted against ``checkpoint_step``, W&B's custom x-axis. Rows close out of order (two
  validators, or a slow one), and W&B's own step may only climb.

A search logs through Ray Tune's ``WandbLoggerCallback``: one run per trial, grouped by job.

``tracking.mode: offline`` (the default) needs no account: everything lands in
``OUTPUT_DIR/NAME/wandb`` and ``wandb sync OUTPUT_DIR/NAME/wandb/offline-run-*`` sends it later.
On a multi-node cluster each process writes on its own node, so use ``online`` there. Metric
names are raydr's (``nDCG@10``): W&B takes ``@``. Tracking never stops training: a failed log is
a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydr.config import RaydrConfig
from raydr.errors import RaydrError
from raydr.tracking.names import VALIDATION, numbers, recorded_run

log = logging.getLogger(__name__)

STEP = "checkpoint_step"  # the validation run's x-axis: the step of the checkpoint measured
_OPEN: dict[str, Any] = {}  # run id → the W&B run this process writes (the driver's, the pool's)
_LOCK = threading.Lock()  # the pool logs from worker threads


def _wandb():
    try:
        import wandb
    except ImportError:
        raise RaydrError(
            "tracking.backend 'wandb': wandb is not installed; pip install 'raydr[wandb]'"
        ) from None
    return wandb


def _same(key: str) -> str:
    return key


@contextlib.contextmanager
def _mode_env(mode: str):
    """WANDB_MODE=offline while Ray's integration checks for an API key: Ray's check reads the
    environment, not the ``mode`` it passes to ``wandb.init``."""
    if mode != "offline":
        yield
        return
    before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = before


@dataclass(frozen=True)
class WandbRun:
    """The job's W&B group; picklable, so Ray ships it to rank 0 and to the validation pool."""

    name: str
    project: str
    entity: str | None
    mode: str
    dir: str
    run_id: str  # the driver's; rank 0's and the pool's add -train and -validation
    config: dict[str, Any] = field(repr=False)  # the job's, as JSON

    def _init(self, part: str = ""):
        """``wandb.init`` for one part of the group, resuming it where a rerun reopens it."""
        return _wandb().init(**self._kwargs(part))

    def _kwargs(self, part: str) -> dict[str, Any]:
        suffix = f"-{part}" if part else ""
        return dict(
            project=self.project,
            entity=self.entity,
            id=f"{self.run_id}{suffix}",
            name=f"{self.name}/{part}" if part else self.name,
            group=self.name,
            job_type=part or "job",
            config=self.config,
            dir=self.dir,
            mode=self.mode,
            resume="allow",  # a rerun resumes training, so it resumes these runs too
            reinit="create_new",  # inline validation: the driver holds two runs at once
        )

    def describe(self) -> str:
        where = f"{self.dir}/wandb (send with `wandb sync`)" if self.mode == "offline" else "W&B"
        return f"W&B group {self.name} (run {self.run_id}) in project {self.project}, {where}"

    # --- rank 0 -------------------------------------------------------------------------------

    def join_on_worker(self):
        """On rank 0: Ray's ``setup_wandb`` → the ``NAME/train`` run; None where it fails."""
        from ray.air.integrations.wandb import setup_wandb

        try:
            with _mode_env(self.mode):
                return setup_wandb(rank_zero_only=True, **self._kwargs("train"))
        except Exception as err:
            log.warning("tracking: rank 0 could not start W&B run %s-train: %s", self.run_id, err)
            return None

    def log_report(self, run, metrics: dict[str, Any], step: int) -> None:
        """Rank 0's report at a checkpoint, at its step."""
        if run is None:
            return
        try:
            run.log(numbers(metrics, _same), step=step)
        except Exception as err:
            log.warning("tracking: could not log step %d: %s", step, err)

    def leave_on_worker(self, run) -> None:
        """Rank 0's loop is over: flush and close its run (Ray may end the process soon)."""
        if run is not None:
            try:
                run.finish()
            except Exception as err:
                log.warning("tracking: could not close W&B run %s-train: %s", self.run_id, err)

    # --- the pool -----------------------------------------------------------------------------

    def log_validation(self, step: int, metrics: dict[str, Any]) -> None:
        """A closed ledger row, against the step of the checkpoint it measured."""
        values = {f"{VALIDATION}{k}": v for k, v in numbers(metrics, _same).items()}
        try:
            with _LOCK:
                run = _OPEN.get(f"{self.run_id}-validation")
                if run is None:
                    run = _OPEN[f"{self.run_id}-validation"] = self._init("validation")
                    run.define_metric(STEP)
                    run.define_metric(f"{VALIDATION}*", step_metric=STEP)
                run.log({**values, STEP: step})
        except Exception as err:  # tracking must never stop validation
            log.warning("tracking: could not log the validation of step %d: %s", step, err)

    def close_here(self) -> None:
        """The pool is closing: finish its run, so that every row is on disk (or sent)."""
        self._finish(f"{self.run_id}-validation", 0)

    # --- the driver ---------------------------------------------------------------------------

    def log_model(self, folder: str | Path) -> None:
        """The exported model as the driver run's ``model`` artifact. The files stay where
        they are (``policy="immutable"``): an offline run needs them until ``wandb sync``."""
        wandb = _wandb()
        try:
            art = wandb.Artifact(f"{self.name}-model", type="model")
            art.add_dir(str(folder), policy="immutable", skip_cache=True)
            _OPEN[self.run_id].log_artifact(art)
        except Exception as err:
            log.warning("tracking: could not log the model %s: %s", folder, err)

    def model_dir(self) -> Path:
        """Where the exported model lives for as long as the run does."""
        return Path(self.dir) / "wandb" / "model"

    def end(self, ok: bool) -> None:
        self._finish(self.run_id, 0 if ok else 1)

    def _finish(self, run_id: str, code: int) -> None:
        with _LOCK:
            run = _OPEN.pop(run_id, None)
        if run is not None:
            try:
                run.finish(exit_code=code)
            except Exception as err:
                log.warning("tracking: could not close W&B run %s: %s", run_id, err)


def start(cfg: RaydrConfig) -> WandbRun:
    """Open (or, for a resumed run, reopen) the driver's run of the job's W&B group. Its id is
    kept in the run folder, so that a rerun resumes the same runs."""
    from raydr.atomic import write_json

    wandb = _wandb()
    run_dir = Path(cfg.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / "tracking.json"
    t = cfg.tracking
    project = t.experiment or cfg.name
    if t.mode == "online" and not _logged_in(wandb):
        raise RaydrError(
            "tracking.mode 'online': no W&B API key; run `wandb login` or set WANDB_API_KEY, or "
            "use tracking.mode: offline"
        )
    run_id = recorded_run(record, backend="wandb", project=project)
    if run_id is None:
        run_id = secrets.token_hex(4)  # W&B's run ids: short, lowercase, unique per project
        write_json(record, {"backend": "wandb", "project": project, "run_id": run_id})
    # Nested and typed, unlike MLflow's text params: W&B filters and plots config values.
    params = cfg.model_dump(mode="json")
    run = WandbRun(cfg.name, project, t.entity, t.mode, str(run_dir), run_id, params)
    try:
        _OPEN[run_id] = run._init()
    except Exception as err:
        raise RaydrError(f"tracking: W&B could not start run {run_id}: {err}") from None
    log.info("tracking: %s", run.describe())
    return run


def _logged_in(wandb) -> bool:
    """A key from WANDB_API_KEY, W&B's settings or .netrc; never a prompt, never the network."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:
        return False


def tune_callback(cfg: RaydrConfig):
    """Ray Tune's ``WandbLoggerCallback`` for a search: one W&B run per trial, grouped by the
    job, in the job's run folder when offline."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    _wandb()
    t = cfg.tracking
    run_dir = Path(cfg.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {"entity": t.entity} if t.entity else {}

    class _Moded(WandbLoggerCallback):
        """Ray's callback, which looks for an API key unless the env says offline."""

        def setup(self, *args, **kwargs) -> None:
            with _mode_env(t.mode):
                super().setup(*args, **kwargs)

    return _Moded(
        project=t.experiment or cfg.name,
        group=cfg.name,
        mode=t.mode,
        dir=str(run_dir),
        upload_checkpoints=False,  # checkpoints stay in Ray's storage; the ledger points at them
        **extra,
    )
