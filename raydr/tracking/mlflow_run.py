"""Experiment tracking in MLflow, through Ray's own integrations (``tracking.backend: mlflow``).

One ``raydr train`` is one MLflow run, and so is each trial of ``raydr tune``:

- **params**: the whole job config, flattened (``training.lr``…);
- **training reports**: every metric rank 0 reports at a checkpoint (loss, lr, pairs/s…), at
  its step. Rank 0 joins the run that the driver opened, with Ray's ``setup_mlflow``
  (``MLFLOW_RUN_ID`` makes it resume that run rather than start another);
- **validated metrics**: every row the validation pool closes, as ``validation/<metric>`` at
  the step of the checkpoint it measured (the ledger's step, not the step training had reached);
- **the model**: the selected checkpoint, exported as Hugging Face + sentence-transformers, under
  the run's artifacts (``model/``).

A search logs through Ray Tune's ``MLflowLoggerCallback`` instead: params and every report per
trial, including the validated metric and the step of the checkpoint it measured.

The default store is a SQLite file in the run folder (``runs/NAME/mlflow.db``, artifacts in
``runs/NAME/mlartifacts``), so it works offline: ``mlflow ui --backend-store-uri
sqlite:///runs/NAME/mlflow.db``. Tracking never stops training: a failed log is a warning.
MLflow names may not hold ``@``, so ``nDCG@10`` is logged as ``nDCG_at_10``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydr.config import RaydrConfig
from raydr.errors import RaydrError
from raydr.tracking.names import VALIDATION, flat, metric_name, numbers, recorded_run

log = logging.getLogger(__name__)


def store_uri(cfg: RaydrConfig) -> str:
    """``tracking.uri``, or the SQLite file in the run folder."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{(Path(cfg.paths.run_dir) / 'mlflow.db').resolve()}"


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise RaydrError(
            "tracking.backend 'mlflow': mlflow is not installed; pip install 'raydr[tracking]'"
        ) from None
    return mlflow


def experiment(cfg: RaydrConfig) -> str:
    """The experiment's id, created where missing with its artifacts in the run folder."""
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    uri, name = store_uri(cfg), cfg.tracking.experiment or cfg.name
    Path(cfg.paths.run_dir).mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = (Path(cfg.paths.run_dir) / "mlartifacts").resolve().as_uri()
        return client.create_experiment(name, artifact_location=artifacts)
    except mlflow.exceptions.MlflowException as err:
        raise RaydrError(f"tracking.uri {uri!r}: {str(err).splitlines()[0]}") from None


@dataclass(frozen=True)
class MlflowRun:
    """An open MLflow run; picklable, so Ray ships it to rank 0 and to the validation pool."""

    uri: str
    experiment: str
    run_id: str

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def join_on_worker(self):
        """On rank 0: Ray's ``setup_mlflow``, resuming this run → the ``mlflow`` module (the
        driver logged the params already). None where that fails: training goes on."""
        from ray.air.integrations.mlflow import setup_mlflow

        os.environ["MLFLOW_RUN_ID"] = self.run_id  # resume the driver's run, not a new one
        try:
            return setup_mlflow(
                tracking_uri=self.uri, experiment_id=self.experiment, rank_zero_only=True
            )
        except Exception as err:
            log.warning("tracking: rank 0 could not join run %s: %s", self.run_id, err)
            return None

    def log_report(self, mlflow, metrics: dict[str, Any], step: int) -> None:
        """Rank 0's report at a checkpoint, through the module ``join_on_worker`` gave."""
        if mlflow is None:
            return
        try:
            mlflow.log_metrics(numbers(metrics), step=step)
        except Exception as err:
            log.warning("tracking: could not log step %d: %s", step, err)

    def leave_on_worker(self, mlflow) -> None:
        """Rank 0 is done; the run stays open for the pool and the driver."""

    def log_validation(self, step: int, metrics: dict[str, Any]) -> None:
        """A closed ledger row, at the step of the checkpoint it measured."""
        values = {f"{VALIDATION}{k}": v for k, v in numbers(metrics).items()}
        self._log(values, step)

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        try:
            self.client().log_batch(self.run_id, metrics=batch)
        except Exception as err:  # tracking must never stop training or validation
            log.warning("tracking: could not log step %d to %s: %s", step, self.uri, err)

    def close_here(self) -> None:
        """The pool is closing: nothing held in its process (each log is one database write)."""

    def describe(self) -> str:
        return f"MLflow run {self.run_id} in {self.uri}"

    def model_dir(self) -> None:
        """None: the model is exported to a temporary folder, as MLflow copies it."""

    def log_model(self, folder: str | Path) -> None:
        """The exported model's files under the run's ``model/`` artifacts."""
        try:
            self.client().log_artifacts(self.run_id, str(folder), "model")
        except Exception as err:
            log.warning("tracking: could not log the model %s: %s", folder, err)

    def end(self, ok: bool) -> None:
        try:
            self.client().set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
        except Exception as err:
            log.warning("tracking: could not close run %s: %s", self.run_id, err)


def start(cfg: RaydrConfig) -> MlflowRun:
    """Open (or, for a resumed run, reopen) the job's MLflow run and log its params. The run id is kept in the run folder so that a rerun, which resumes
    training, resumes the same MLflow run."""
    from raydr.atomic import write_json

    exp, uri = experiment(cfg), store_uri(cfg)
    record = Path(cfg.paths.run_dir) / "tracking.json"
    run_id = recorded_run(record, backend="mlflow", uri=uri)
    client = MlflowRun(uri, exp, "").client()
    if run_id is None:
        run_id = client.create_run(exp, run_name=cfg.name).info.run_id
        write_json(record, {"backend": "mlflow", "uri": uri, "run_id": run_id})
    else:
        client.update_run(run_id, status="RUNNING")
    run = MlflowRun(uri, exp, run_id)
    params = flat(cfg.model_dump(mode="json"))
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    try:
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=items[i : i + 100])
    except Exception as err:  # a rerun with changed params: keep the first, say so
        log.warning("tracking: params of run %s not logged again: %s", run_id, err)
    log.info("tracking: MLflow run %s in %s", run_id, uri)
    return run


def tune_callback(cfg: RaydrConfig):
    """Ray Tune's ``MLflowLoggerCallback`` for a search: one MLflow run per trial."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class _Named(MLflowLoggerCallback):
        """Ray's callback, with raydr's metric names made MLflow names (no ``@``)."""

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            renamed = {metric_name(k): v for k, v in result.items()}
            super().log_trial_result(iteration, trial, renamed)

    experiment(cfg)  # created with its artifacts in the run folder
    return _Named(tracking_uri=store_uri(cfg), experiment_name=cfg.tracking.experiment or cfg.name)
