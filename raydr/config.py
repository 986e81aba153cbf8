"""Strict YAML configs: pydantic models per section, ``key=value`` overrides, friendly errors.

Every section forbids unknown keys, so a typo is an error that names the key and suggests the
closest valid one instead of being silently ignored. Relative paths are relative to the
directory the command runs in (jobs are launched from the repository root).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from raydr.errors import RaydrError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_METRICS = ["nDCG@10", "RR@10", "R@100", "R@1000", "AP"]


def check_measures(names: Iterable[str]) -> list:
    """Parse IR measure names with ir-measures; an unknown name is a ValueError naming it.

    Lives here, not beside the scoring code, because config validation needs it and config
    sits below every other layer."""
    import ir_measures

    parsed = []
    for name in names:
        try:
            parsed.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError, AttributeError):
            raise ValueError(
                f"unknown IR measure {name!r} (ir-measures names, e.g. nDCG@10, RR@10, R@100, AP)"
            ) from None
    return parsed


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The dual encoder."""

    name: str = Field(DEFAULT_MODEL, description="packaged MiniLM, a local path, or a hub name")
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    shared: bool = Field(True, description="one tower for queries and passages")
    query_max_length: PositiveInt = 64
    passage_max_length: PositiveInt = 256
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto = bf16 where the CPU/GPU supports it"
    )


class DataConfig(Section):
    """An imported dataset (``raydr import-beir``)."""

    path: Path
    split: str = "test"


class IndexConfig(Section):
    backend: Literal["faiss", "hnswlib"] = "faiss"
    faiss_type: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: PositiveInt = 1024
    nprobe: PositiveInt = 32
    hnsw_m: PositiveInt = 32
    ef_construction: PositiveInt = 200
    ef_search: PositiveInt = 256
    use_gpu: Literal["auto", "yes", "no"] = Field(
        "auto", description="faiss on GPU when faiss.get_num_gpus() > 0"
    )


class EvalConfig(Section):
    depth: PositiveInt = Field(1000, description="documents retrieved per query")
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    primary_metric: str = "nDCG@10"
    batch_size: PositiveInt = 64
    # BEIR's evaluator drops a retrieved doc whose id equals the query id; MTEB does the same.
    ignore_identical_ids: bool = True
    write_run: bool = True

    @field_validator("metrics")
    @classmethod
    def _known_measures(cls, value: list[str]) -> list[str]:
        check_measures(value)
        return value

    @model_validator(mode="after")
    def _primary_is_computed(self) -> EvalConfig:
        if self.primary_metric not in self.metrics:
            raise ValueError(
                f"primary_metric {self.primary_metric!r} is not among metrics {self.metrics}"
            )
        return self


class BM25Config(Section):
    k1: float = Field(1.5, gt=0)
    b: float = Field(0.75, ge=0, le=1)
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stemmer: Literal["english", "none"] = "english"
    stopwords: Literal["en", "none"] = "en"


class LossConfig(Section):
    """The training loss over embeddings (``raydr.losses``)."""

    type: Literal["infonce", "margin"] = Field(
        "infonce",
        description="infonce: contrastive cross-entropy (uses training.temperature); margin: "
        "self-distillation with adaptive relevance margins (Gienapp et al.)",
    )
    target: Literal["adaptive", "distributed"] | float = Field(
        "adaptive", description="margin: adaptive, distributed, or a fixed margin (a number)"
    )
    in_batch: bool = Field(False, description="margin: every hard negative of the batch")
    error: Literal["squared", "absolute", "softplus"] = Field(
        "squared", description="margin: the error on margin - target"
    )

    @model_validator(mode="after")
    def _ruled_out(self) -> LossConfig:
        if self.type == "margin" and self.target == "distributed" and self.in_batch:
            raise ValueError(
                "target 'distributed' cannot be combined with in_batch: true (distributed "
                "targets already span the batch's negatives; the method rules it out)"
            )
        return self


class MemoryBankConfig(Section):
    """Cross-batch memory (Wang et al. 2021): recent passage embeddings as extra negatives."""

    size: NonNegativeInt = Field(0, description="passages kept (all workers'); 0 turns it off")
    warmup_steps: NonNegativeInt = Field(
        0, description="steps before the bank joins the loss (embeddings drift fastest early)"
    )
    hold_negatives: bool = Field(
        False,
        description="elastic runs: top the bank up when workers are lost, so negatives per "
        "query stay what they are at the most workers",
    )


class MiningConfig(Section):
    """Where hard negatives come from (``raydr.mining``)."""

    source: Literal["bm25", "dynamic"] = Field(
        "bm25",
        description="bm25: the static table in training.negatives; dynamic: an index of the "
        "training corpus that the validator pool refreshes from recent checkpoints",
    )
    refresh_every: PositiveInt = Field(
        50,
        description="dynamic: steps between full re-encodes of the training corpus (done with "
        "the first checkpoint that far on; its validation shares the encode)",
    )
    landmarks: NonNegativeInt = Field(
        0,
        description="dynamic: docs re-encoded at the checkpoints between refreshes to "
        "Nyström-correct the whole index (drawn from the validation subset first: free); 0: off",
    )
    ridge: float = Field(
        1.0,
        ge=0,
        description="dynamic: Nyström regularisation, in units of the landmarks' mean "
        "eigenvalue (0: exact least squares, noisy near landmarks = embedding width)",
    )
    sampling: Literal["topk", "softmax"] = Field(
        "topk",
        description="topk: negatives drawn uniformly from the top `depth`; softmax: drawn in "
        "proportion to exp(score / temperature) over the whole corpus",
    )
    depth: PositiveInt = Field(30, description="topk: the candidates negatives are drawn from")
    temperature: float = Field(0.05, gt=0, description="softmax: sampling temperature")
    clusters: PositiveInt | None = Field(
        None, description="k-means clusters the index searches through (default √N)"
    )
    poll_s: float = Field(
        2.0, gt=0, description="how often a worker asks the pool for a newer index (never waits)"
    )
    nprobe: PositiveInt | Literal["auto", "exact"] = Field(
        "auto",
        description="clusters a draw searches: exact (every doc, bounded) or the nprobe best by "
        "bound, exact within them; auto: exact under 100,000 docs, else a sixteenth of the "
        "clusters",
    )
    index_dtype: Literal["fp16", "fp32"] = Field(
        "fp16",
        description="the published index's embeddings: fp16 halves its bytes; top-k and softmax "
        "draws stay exact over the stored (rounded) embeddings",
    )

    def clusters_for(self, n_docs: int) -> int:
        """``clusters``, or √N: probing costs C centroid scores plus the probed members."""
        return self.clusters or max(1, int(math.sqrt(n_docs)))


class KeepConfig(Section):
    """Which of a run's checkpoints stay on disk. The validation ledger decides (see
    ``validation/retention.py``): the ``best`` validated ones by the primary metric, the
    ``newest`` (the resume point, the only ones with optimizer state), and any still owed a
    validation; the rest go once their closing row is written. A trial stopped by the scheduler
    keeps only its best. Without validation, the ``newest`` are kept (by age)."""

    best: PositiveInt | None = Field(
        1, description="validated checkpoints kept by the primary metric; null: keep every one"
    )
    newest: int = Field(1, description="newest checkpoints kept, with optimizer state (>= 1)")

    @field_validator("newest")
    @classmethod
    def _keeps_the_resume_point(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                f"{value} would delete the resume point (the newest checkpoint, with optimizer "
                "state): keep at least 1"
            )
        return value


class TrainingConfig(Section):
    """Ray Train dual-encoder training with (cross-batch) InfoNCE."""

    loss: LossConfig = Field(default_factory=LossConfig)
    memory_bank: MemoryBankConfig = Field(default_factory=MemoryBankConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)

    split: str = "train"
    negatives: Path | None = Field(None, description="Parquet from `raydr mine-negatives`")
    group_size: PositiveInt = Field(1, description="passages per query: 1 positive + negatives")
    batch_size: PositiveInt = Field(16, description="queries per worker per step")
    grad_accum: PositiveInt = 1
    grad_cache_chunk: PositiveInt | None = Field(
        None,
        description="GradCache: encode the batch in chunks of this many queries (the same loss "
        "and gradients, one chunk's activation memory); None encodes it whole",
    )
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None
    stop_at: PositiveInt | None = Field(
        None,
        description="end the run after this step, while the learning-rate schedule still spans "
        "epochs (or max_steps): a refit replays the schedule up to the step dev selected",
    )
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(0.05, gt=0)
    cross_batch: bool = True
    checkpoint_every: PositiveInt = Field(50, description="steps between checkpoints")
    log_every: PositiveInt = Field(10, description="steps between progress lines (rank 0)")
    num_workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        2, description="a count, or (min, max) for elastic training"
    )
    resize_interval_s: float = Field(
        60.0, gt=0, description="elastic runs: how often Ray considers adding workers"
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="per worker; custom resources (e.g. train_node: 1) pin workers to node types",
    )
    use_gpu: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="auto: on GPU when torch sees CUDA here, or when a cluster (ray.address) "
        "is asked for GPUs in resources_per_worker: its workers run on GPU nodes, not on the "
        "driver's CPU head",
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train storage (a local path or s3://, gs://...); default OUTPUT_DIR/ray",
    )
    keep: KeepConfig = Field(default_factory=KeepConfig)
    max_failures: int = Field(2, ge=-1)
    cpus: list[int] | None = Field(
        None,
        description="pin training workers to these CPU cores (Linux; e.g. to keep validators apart)",
    )

    # Cross-field rules, one named validator each (pydantic runs them in this order).
    @model_validator(mode="after")
    def _elastic_range(self) -> TrainingConfig:
        if isinstance(self.num_workers, tuple) and self.num_workers[0] > self.num_workers[1]:
            raise ValueError(f"num_workers range {self.num_workers} has min > max")
        return self

    @model_validator(mode="after")
    def _grad_cache_chunk_within_batch(self) -> TrainingConfig:
        if self.grad_cache_chunk is not None and self.grad_cache_chunk > self.batch_size:
            raise ValueError(
                f"grad_cache_chunk={self.grad_cache_chunk} is larger than batch_size="
                f"{self.batch_size}: a chunk is a part of one worker's batch of queries"
            )
        return self

    @model_validator(mode="after")
    def _memory_bank_needs_infonce(self) -> TrainingConfig:
        if self.loss.type == "margin" and self.memory_bank.size:
            raise ValueError(
                "memory_bank.size > 0 needs loss.type 'infonce': the margin loss has no "
                "denominator for banked negatives to join"
            )
        return self

    @model_validator(mode="after")
    def _dynamic_mining_has_room(self) -> TrainingConfig:
        if self.mining.source != "dynamic":
            return self
        if self.group_size < 2:
            raise ValueError(
                f"mining.source 'dynamic' serves hard negatives: it needs group_size >= 2 (got "
                f"{self.group_size})"
            )
        if self.mining.sampling == "topk" and self.mining.depth < self.group_size - 1:
            raise ValueError(
                f"mining.depth={self.mining.depth} is smaller than the {self.group_size - 1} "
                f"negatives per query that group_size={self.group_size} draws from it"
            )
        return self

    @model_validator(mode="after")
    def _margin_needs_a_negative(self) -> TrainingConfig:
        if self.loss.type == "margin" and self.group_size < 2:
            raise ValueError(
                f"loss.type 'margin' needs a hard negative per query: group_size >= 2 (got "
                f"{self.group_size}) and training.negatives"
            )
        return self


class SamplingConfig(Section):
    """Which corpus subset validators search (Asyncval's corpus-subset strategies)."""

    strategy: Literal["full", "random", "bm25-pool", "dense-pool", "union"] = "bm25-pool"
    size: PositiveInt = Field(1000, description="random: docs drawn besides the judged ones")
    depth: PositiveInt = Field(100, description="pools: top-k per validation query")
    seed: int = 0


class DevCollection(Section):
    """One more dev set the validators score every checkpoint on, beside ``validation.split``
    of ``data.path``: an imported dataset (``raydr import-beir``) of another domain."""

    path: Path
    split: str = Field("dev", description="its qrels split; never one the model trains on")
    weight: float = Field(1.0, gt=0, description="its share of the primary metric")
    name: str | None = Field(None, description="its label in metric names; default: the folder")

    def label(self) -> str:
        return self.name or Path(self.path).name


class ValidationConfig(Section):
    """Asynchronous checkpoint validation by a pool of warm actors."""

    enabled: bool = True
    mode: Literal["pool", "inline"] = Field(
        "pool",
        description="pool: warm validator actors, training never waits; inline: rank 0 "
        "validates in the loop while every worker waits (no actors; `raydr train` only)",
    )
    split: str = Field("test", description="qrels split whose queries validate checkpoints")
    max_queries: PositiveInt | None = None
    num_actors: PositiveInt = 2
    num_gpus: float = Field(0.0, ge=0, description="per actor, fractions allowed (e.g. 0.25)")
    num_cpus: float = Field(1.0, ge=0, description="per actor; also its torch thread count")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources/labels to pin validators"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_size: PositiveInt = 64
    max_retries: int = Field(2, ge=0, description="re-dos of a checkpoint whose actor died")
    order: Literal["rungs_first", "fifo"] = Field(
        "rungs_first",
        description="which queued checkpoint a free validator takes: rungs_first = those at a "
        "scheduler rung first, then trials in turn (least recently served), each trial's oldest "
        "first; fifo = in arrival order",
    )
    cpus: list[int] | None = Field(
        None, description="pin validator actors to these CPU cores (Linux)"
    )
    shards: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="validators that share one checkpoint's validation (pool mode): its corpus "
        "(or subset) is cut into this many shards, each encoded by a free validator, and the "
        "metric is scored once from their merged top lists; auto = every validator "
        "(num_actors) when sampling.strategy is full (and no `also`), else 1. Under strategy full a full refresh "
        "of the dynamic-negatives index is split too, its shards' embeddings joined into the "
        "index; a Nyström correction runs whole",
    )

    weight: float = Field(
        1.0, gt=0, description="the share of validation.split (on data.path) when `also` lists more"
    )
    also: list[DevCollection] = Field(
        default_factory=list,
        description="more dev sets, each validated on every checkpoint: the primary metric is "
        "then the weighted mean over all of them (parts beside it, as METRIC/NAME)",
    )

    @model_validator(mode="after")
    def _also_is_whole_and_named_once(self) -> ValidationConfig:
        if not self.also:
            return self
        labels = [c.label() for c in self.also]
        if len(set(labels)) < len(labels) or any("/" in label for label in labels):
            raise ValueError(
                f"also: names {labels} must be distinct and without '/' (set name: per entry)"
            )
        if self.sampling.strategy not in {"random", "full", "bm25-pool"}:
            raise ValueError(
                f"also: the other dev sets are sampled as random, full or bm25-pool, not "
                f"{self.sampling.strategy!r} (it needs the initial model's run on each)"
            )
        if self.shards not in ("auto", 1):
            raise ValueError(
                "also: a checkpoint scattered in shards scores one dev set; set shards: 1"
            )
        return self

    def weights(self) -> dict[str, float]:
        """Each dev set's share of the primary metric, by label ("" for validation.split)."""
        return {"": self.weight, **{c.label(): c.weight for c in self.also}}

    @model_validator(mode="after")
    def _shards_need_a_pool(self) -> ValidationConfig:
        if self.mode == "inline" and self.shards not in ("auto", 1):
            raise ValueError(
                f"shards={self.shards} splits a checkpoint over the pool's validators, but "
                f"mode is inline (rank 0 validates alone); use mode=pool or shards=auto"
            )
        return self

    def resolved_shards(self) -> int:
        """How many shards one checkpoint's validation is cut into (``shards``, resolved)."""
        if self.shards != "auto":
            return int(self.shards)
        if self.mode == "pool" and self.sampling.strategy == "full" and not self.also:
            return self.num_actors
        return 1


class SchedulerConfig(Section):
    type: Literal["asha", "median", "none"] = "asha"
    grace_period: PositiveInt = Field(
        1, description="validated steps before a trial can be stopped"
    )
    reduction_factor: float = Field(2.0, gt=1)
    max_t: PositiveInt | None = Field(None, description="validated steps (default: training steps)")


class TuneConfig(Section):
    """Ray Tune search; the scheduler reads the validators' metric at the validated step."""

    metric: str | None = Field(None, description="default: eval.primary_metric")
    mode: Literal["max", "min"] = "max"
    num_samples: PositiveInt | Literal["auto"] = 4
    max_concurrent_trials: PositiveInt | Literal["auto"] = "auto"
    search_alg: Literal["random", "grid", "optuna"] = "random"
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="dotted config field → {choice|grid|uniform|loguniform|randint: ...}",
    )
    storage_path: str | None = Field(None, description="Ray Tune storage; default OUTPUT_DIR/tune")
    trial_cpus: float = Field(0.01, gt=0, description="the Tune function's own CPU share")
    seed: int | None = None
    rung_wait: Literal["none", "until_validated"] = Field(
        "none",
        description="until_validated: a trial pauses at each ASHA rung checkpoint, keeping its "
        "resources, until the scheduler has decided on that checkpoint's metric",
    )

    stopped_checkpoints: Literal["finish", "cancel"] = Field(
        "finish",
        description="what the validation pool does with the queued checkpoints of a trial the "
        "scheduler stops: finish = validate them anyway (full curves); cancel = close each with a "
        "'cancelled' ledger row and spend the validators on live trials (one being validated "
        "finishes)",
    )
    confirm_top_k: int = Field(
        3,
        ge=0,
        description="after the search, re-validate the best checkpoint of the top k trials on "
        "the full corpus of validation.split and name the winner on that; 0 = name it on the "
        "validation subset",
    )

    @model_validator(mode="after")
    def _rung_wait_needs_rungs(self) -> TuneConfig:
        if self.rung_wait == "none":
            return self
        if self.scheduler.type != "asha":
            raise ValueError(
                f"rung_wait=until_validated waits at ASHA's rungs, but tune.scheduler.type is "
                f"{self.scheduler.type!r}, which has none; use type=asha or rung_wait=none"
            )
        return self


class RayConfig(Section):
    """Where to run. ``address: null`` starts a local Ray in-process (laptop, CI, tests)."""

    address: str | None = Field(None, description='"auto" or ray://host:port for a cluster')
    num_cpus: PositiveInt | None = None
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="logical GPUs for a local Ray (lets fractional reservations work on a CPU)",
    )
    object_store_memory: PositiveInt | None = None
    autoscaler: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="can nodes still be added? auto: when Ray's autoscaler v2 reports (what "
        "`ray up` runs); yes: also for a v1 autoscaler (waits up to scale_up_timeout_s); no: "
        "refuse what the nodes up now cannot hold",
    )
    scale_up_timeout_s: PositiveFloat = Field(
        900.0,
        description="on an autoscaling cluster: how long to wait for nodes that hold the "
        "trainer's and validators' first requests before failing",
    )
    infeasible_after_s: PositiveFloat = Field(
        10.0,
        description="fail once Ray's autoscaler (v2) has reported a request infeasible (no node "
        "type holds it) for this long",
    )


class TrackingConfig(Section):
    """Experiment tracking (``raydr.tracking``): params, every report, every validated metric
    at its checkpoint's step, and the selected model."""

    backend: Literal["none", "mlflow", "wandb"] = "none"
    uri: str | None = Field(
        None,
        description="an MLflow tracking URI; default: sqlite in the run folder (offline), "
        "OUTPUT_DIR/NAME/mlflow.db. W&B's server is WANDB_BASE_URL's, not this field's",
    )
    experiment: str | None = Field(
        None, description="the MLflow experiment or the W&B project; default: the job name"
    )
    mode: Literal["offline", "online"] = Field(
        "offline",
        description="W&B only: offline writes OUTPUT_DIR/NAME/wandb (send it later with `wandb "
        "sync`); online streams to the W&B server and needs `wandb login` or WANDB_API_KEY",
    )
    entity: str | None = Field(None, description="W&B only: the team or user; default: yours")

    @model_validator(mode="after")
    def _fields_of_the_backend(self) -> TrackingConfig:
        if self.backend == "wandb" and self.uri is not None:
            raise ValueError(
                "tracking.uri is an MLflow URI; for a W&B server set WANDB_BASE_URL instead"
            )
        if self.backend != "wandb" and self.entity is not None:
            raise ValueError("tracking.entity is W&B's; it needs tracking.backend: wandb")
        return self


class RaydrConfig(Section):
    """A whole job. Sections grow with the training, validation and tuning engines."""

    name: str = "raydr"
    output_dir: Path = Field(
        Path("runs"), description="the one storage root: run folders, Ray and Tune storage"
    )
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    index: IndexConfig = Field(default_factory=IndexConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    bm25: BM25Config = Field(default_factory=BM25Config)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _dynamic_needs_the_pool(self) -> RaydrConfig:
        v = self.validation
        if self.training.mining.source == "dynamic" and not (v.enabled and v.mode == "pool"):
            raise ValueError(
                "training.mining.source 'dynamic' needs the validator pool (validation.enabled: "
                "true, validation.mode: pool): its actors re-encode the corpus for the index"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def paths(self) -> RunPaths:
        """Every storage location of this job, derived from ``output_dir`` unless overridden."""
        root = Path(self.output_dir).resolve()
        return RunPaths(
            run_dir=root / self.name,
            train_storage=_absolute(self.training.storage_path or root / "ray"),
            tune_storage=_absolute(self.tune.storage_path or root / "tune"),
        )

    def with_absolute_paths(self) -> RaydrConfig:
        """A copy with local paths made absolute: Ray workers and actors run elsewhere."""
        tree = self.model_dump(mode="json")
        tree["data"]["path"] = str(Path(self.data.path).resolve())
        tree["output_dir"] = str(Path(self.output_dir).resolve())
        # Derived storage made explicit: workers and trials run in other folders.
        tree["training"]["storage_path"] = self.paths.train_storage
        tree["tune"]["storage_path"] = self.paths.tune_storage
        if self.training.negatives is not None:
            tree["training"]["negatives"] = str(Path(self.training.negatives).resolve())
        if Path(self.model.name).exists():
            tree["model"]["name"] = str(Path(self.model.name).resolve())
        for entry, also in zip(tree["validation"]["also"], self.validation.also, strict=True):
            entry["path"] = str(Path(also.path).resolve())
        return RaydrConfig.model_validate(tree)


@dataclass(frozen=True)
class RunPaths:
    """Where a job writes. One root (``output_dir``); the rest follows unless set explicitly."""

    run_dir: Path  # ledger, validation subset, metrics, summary, exported models (local)
    train_storage: str  # Ray Train's storage_path: checkpoints under <train_storage>/<run name>
    tune_storage: str  # Ray Tune's storage_path: experiment state, trial logs

    def describe(self) -> str:
        return (
            f"run folder: {self.run_dir}\n"
            f"checkpoints (Ray Train storage): {self.train_storage}\n"
            f"Tune storage: {self.tune_storage}"
        )


def _absolute(path: str | Path) -> str:
    """Local paths made absolute (Ray requires it); URIs (s3://, gs://) kept as they are."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


# ---------------------------------------------------------------- loading and errors


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: i + 1])
            raise RaydrError(f"{source}: cannot set {dotted!r}: {where!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["model.pooling=cls", "eval.depth=100"]`` → ``[("model.pooling", "cls"), ...]``.

    Values are parsed as YAML scalars/lists so ``x=3``, ``x=true`` and ``x=[a, b]`` get types.
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise RaydrError(f"override {item!r}: expected key=value, e.g. model.pooling=cls")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key, value))
    return parsed


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section that holds ``loc`` (for did-you-mean suggestions)."""
    model: type[BaseModel] = RaydrConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(err: dict[str, Any], overridden: set[str]) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    origin = " (from a command-line override)" if dotted in overridden else ""
    if err["type"] == "extra_forbidden":
        valid = _section_fields(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{dotted}: unknown key{origin}{hint} (valid keys: {', '.join(valid)})"
    if err["type"] == "missing":
        return f"{dotted}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{dotted}: {msg}{shown}{origin}"


def build(tree: dict[str, Any], source: str, overridden: set[str] = frozenset()) -> RaydrConfig:
    """Validate a plain dict into a config, turning pydantic's errors into one RaydrError."""
    try:
        return RaydrConfig.model_validate(tree)
    except ValidationError as exc:
        lines = [_describe(e, set(overridden)) for e in exc.errors()]
        raise RaydrError(f"{source}: invalid config: " + "; ".join(lines)) from None


def load(path: str | Path, overrides: list[str] | None = None) -> RaydrConfig:
    """Read a YAML job file, apply ``key=value`` overrides, validate strictly."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RaydrError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RaydrError(f"{path}: cannot read config ({exc})") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RaydrError(f"{path}{where}: YAML syntax error: {problem}") from None
    if not isinstance(tree, dict):
        raise RaydrError(f"{path}: expected a mapping of sections at the top level")
    pairs = parse_overrides(overrides or [])
    for key, value in pairs:
        _set_dotted(tree, key, value, str(path))
    return build(tree, str(path), {k for k, _ in pairs})
