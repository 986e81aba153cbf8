from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raydr import config
from raydr.errors import RaydrError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: some/dir\nmodel:\n  pooling: cls\n")
    cfg = config.load(
        path, ["eval.depth=100", "model.normalize=false", "eval.metrics=[nDCG@10, AP]"]
    )
    assert cfg.model.pooling == "cls"
    assert cfg.model.normalize is False
    assert cfg.eval.depth == 100
    assert cfg.eval.metrics == ["nDCG@10", "AP"]
    assert cfg.data.path == Path("some/dir")
    assert cfg.model.passage_max_length == 256  # untouched default


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: x\nmodel:\n  poolng: cls\n")
    with pytest.raises(RaydrError) as err:
        config.load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "model.poolng: unknown key" in msg
    assert "did you mean 'pooling'" in msg


def test_unknown_override_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: x\n")
    with pytest.raises(
        RaydrError,
        match=r"eval\.dept: unknown key \(from a command-line override\); did you mean 'depth'",
    ):
        config.load(path, ["eval.dept=5"])


def test_type_error_names_field_and_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: x\nmodel:\n  query_max_length: lots\n")
    with pytest.raises(
        RaydrError, match=r"model\.query_max_length: Input should be a valid integer.*'lots'"
    ):
        config.load(path)


def test_bad_literal_and_missing_section(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  pooling: max\n")
    with pytest.raises(RaydrError) as err:
        config.load(path)
    assert "model.pooling: Input should be 'mean' or 'cls'" in str(err.value)
    assert "data: required field is missing" in str(err.value)


def test_unknown_metric_and_primary_metric(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: x\neval:\n  metrics: [nDCG@10, Bogus@3]\n")
    with pytest.raises(RaydrError, match=r"eval\.metrics: unknown IR measure 'Bogus@3'"):
        config.load(path)
    with pytest.raises(RaydrError, match="primary_metric 'AP' is not among metrics"):
        config.load(
            _write(
                tmp_path, "data:\n  path: x\neval:\n  metrics: [nDCG@10]\n  primary_metric: AP\n"
            )
        )


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: x\nmodel: [unclosed\n")
    with pytest.raises(RaydrError, match=rf"{path}:\d+: YAML syntax error"):
        config.load(path)


def test_missing_file_and_bad_override_syntax(tmp_path: Path) -> None:
    with pytest.raises(RaydrError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")
    path = _write(tmp_path, "data:\n  path: x\n")
    with pytest.raises(RaydrError, match="expected key=value"):
        config.load(path, ["model.pooling"])
    with pytest.raises(RaydrError, match=r"'data\.path' is not a section"):
        config.load(path, ["data.path.x=1"])


def test_every_shipped_job_validates() -> None:
    jobs = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
    assert jobs, "jobs/ holds no YAML"
    for job in jobs:
        first = job.read_text().splitlines()[0]
        assert first.startswith("# ") and "raydr " in first, (
            f"{job.name}: must open with its launch command"
        )
        config.load(job)


def test_one_storage_root_derives_every_path(tmp_path: Path) -> None:
    base = {"name": "job", "output_dir": str(tmp_path / "out"), "data": {"path": "x"}}
    paths = config.build(base, "t").paths
    assert paths.run_dir == tmp_path / "out" / "job"
    assert paths.train_storage == str(tmp_path / "out" / "ray")
    assert paths.tune_storage == str(tmp_path / "out" / "tune")
    assert str(paths.run_dir) in paths.describe() and paths.train_storage in paths.describe()
    # Explicit overrides win; URIs stay URIs; neither replaces the other.
    tree = {**base, "training": {"storage_path": "s3://bucket/ckpt"}, "tune": {"storage_path": "t"}}
    paths = config.build(tree, "t").paths
    assert paths.train_storage == "s3://bucket/ckpt"
    assert paths.tune_storage == str(Path("t").resolve())
    absolute = config.build(tree, "t").with_absolute_paths()
    assert absolute.training.storage_path == "s3://bucket/ckpt"
    assert absolute.paths == paths


def test_shipped_training_jobs_select_on_dev_and_report_on_test() -> None:
    jobs = Path(__file__).resolve().parents[2] / "jobs"
    for job in sorted(jobs.glob("*.yaml")):
        cfg = config.load(job)
        if "training" not in yaml.safe_load(job.read_text()):
            continue  # evaluation-only jobs
        assert cfg.validation.split == "dev" != cfg.training.split, job.name
        assert cfg.data.split == "test", job.name


def test_loss_choice_and_the_combinations_it_refuses(tmp_path: Path) -> None:
    from raydr.losses import AdaptiveMarginLoss, InfoNCELoss, build_loss

    path = _write(tmp_path, "data:\n  path: d\ntraining:\n  group_size: 2\n")
    assert isinstance(build_loss(config.load(path).training), InfoNCELoss)  # the default
    margin = ["training.loss.type=margin", "training.loss.error=softplus"]
    loss = build_loss(config.load(path, [*margin, "training.loss.target=0.4"]).training)
    assert isinstance(loss, AdaptiveMarginLoss) and (loss.target, loss.error) == (0.4, "softplus")
    cases = {
        "training.loss.error=cubic": r"training\.loss\.error: Input should be 'squared', "
        r"'absolute' or 'softplus'",
        "training.loss.target=teacher": r"training\.loss\.target",
        "training.loss.in_batch=true": r"target 'distributed' cannot be combined with in_batch",
        "training.group_size=1": r"loss\.type 'margin' needs a hard negative per query: "
        r"group_size >= 2 \(got 1\)",
    }
    for override, match in cases.items():
        extra = ["training.loss.target=distributed"] if "in_batch" in override else []
        with pytest.raises(RaydrError, match=match):
            config.load(path, [*margin, *extra, override])


def test_memory_bank_sizes_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    from raydr.training.preflight import check_memory_bank

    path = _write(tmp_path, "data:\n  path: d\ntraining:\n  group_size: 2\n  batch_size: 4\n")
    with pytest.raises(RaydrError, match=r"memory_bank\.size > 0 needs loss\.type 'infonce'"):
        config.load(path, ["training.memory_bank.size=16", "training.loss.type=margin"])
    with pytest.raises(RaydrError, match=r"memory_bank\.size: Input should be greater than"):
        config.load(path, ["training.memory_bank.size=-1"])
    tcfg = config.load(path, ["training.memory_bank.size=8"]).training
    # 2 workers x batch 4 x group 2 = 16 passages a step; 10 micro-batches an epoch = 160.
    with pytest.raises(RaydrError, match=r"size=8 does not hold one step's passages: .* = 16"):
        check_memory_bank(tcfg, world=2, micro_batches=10)
    check_memory_bank(config.load(path, ["training.memory_bank.size=160"]).training, 2, 10)
    big = config.load(path, ["training.memory_bank.size=176"]).training
    with pytest.raises(RaydrError, match=r"size=176 exceeds the 160 passages of one epoch"):
        check_memory_bank(big, world=2, micro_batches=10)


def test_held_negatives_top_the_bank_up_as_workers_go(tmp_path: Path) -> None:
    from raydr.training.plan import bank_rows

    path = _write(tmp_path, "data:\n  path: d\ntraining:\n  group_size: 2\n  batch_size: 4\n")
    elastic = ["training.num_workers=[1, 3]", "training.memory_bank.size=24"]
    tcfg = config.load(path, elastic).training
    assert [bank_rows(tcfg, w) for w in (1, 2, 3)] == [(24, 24)] * 3  # off: the bank as set
    held = config.load(path, [*elastic, "training.memory_bank.hold_negatives=true"]).training
    # Each missing worker's 4 x 2 passages come from the bank; it keeps enough for 1 worker.
    assert [bank_rows(held, w) for w in (1, 2, 3)] == [(40, 40), (32, 40), (24, 40)]
    # So W*B*G + bank rows is the same at every world size.
    assert {w * 4 * 2 + bank_rows(held, w)[0] for w in (1, 2, 3)} == {48}


def test_grad_cache_chunk_must_fit_the_batch(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: d\ntraining:\n  batch_size: 4\n")
    assert config.load(path, ["training.grad_cache_chunk=2"]).training.grad_cache_chunk == 2
    with pytest.raises(RaydrError, match=r"grad_cache_chunk: Input should be greater than 0"):
        config.load(path, ["training.grad_cache_chunk=0"])
    with pytest.raises(RaydrError, match=r"grad_cache_chunk=8 is larger than batch_size=4"):
        config.load(path, ["training.grad_cache_chunk=8"])


def test_grad_cache_chunk_may_be_the_whole_batch(tmp_path: Path) -> None:
    """Pins the boundary of ``_grad_cache_chunk_within_batch``: a chunk as large as the batch
    (one chunk a step, the plain loss's memory) is allowed; only a larger one is refused."""
    path = _write(tmp_path, "data:\n  path: d\ntraining:\n  batch_size: 4\n")
    assert config.load(path, ["training.grad_cache_chunk=4"]).training.grad_cache_chunk == 4
    with pytest.raises(RaydrError, match=r"grad_cache_chunk=5 is larger than batch_size=4"):
        config.load(path, ["training.grad_cache_chunk=5"])


def test_mining_depth_bounds_topk_sampling_only(tmp_path: Path) -> None:
    """Pins ``mining.depth`` being checked against the negatives a query draws only under
    ``sampling: topk``, where depth is the pool they are drawn from; softmax sampling draws
    over the whole corpus and ignores depth, so a small depth must not refuse it."""
    path = _write(
        tmp_path,
        "data:\n  path: d\ntraining:\n  group_size: 4\n"
        "  mining:\n    source: dynamic\n    depth: 2\n",
    )
    soft = config.load(path, ["training.mining.sampling=softmax"]).training.mining
    assert (soft.sampling, soft.depth) == ("softmax", 2)
    with pytest.raises(
        RaydrError,
        match=r"training: mining\.depth=2 is smaller than the 3 negatives per query that "
        r"group_size=4 draws",
    ):
        config.load(path, ["training.mining.sampling=topk"])
    top = config.load(path, ["training.mining.sampling=topk", "training.mining.depth=3"])
    assert top.training.mining.depth == 3  # exactly one candidate per negative: enough
