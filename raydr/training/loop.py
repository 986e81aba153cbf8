"""The per-worker training loop: one plain function, top to bottom.

Ray glue stays at the edges: ``ray.train`` gives rank, world size and the checkpoint to resume
from, and receives reports. Everything between is ordinary PyTorch.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raydr.config import RaydrConfig


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from transformers import AutoTokenizer, get_scheduler

    from raydr.data.groups import build_rows, check_group_size, load_negatives, sample_group, shard
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts
    from raydr.losses import InfoNCELoss
    from raydr.model.encoder import resolve_dtype, resolve_model_path
    from raydr.retrieval.encode import autocast
    from raydr.training import checkpoint

    cfg = RaydrConfig.model_validate(loop_config["config"])
    tcfg = cfg.training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray starts workers with one torch thread; use the CPUs this worker reserved.
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    pin_cpus(tcfg.cpus)
    device = ray.train.torch.get_device()
    dtype = resolve_dtype(cfg.model.dtype, device)

    # --- data: every worker builds the same rows; ``shard`` gives each a disjoint slice.
    negatives = load_negatives(tcfg.negatives) if tcfg.negatives else None
    rows = build_rows(cfg.data.path, tcfg.split, negatives)
    check_group_size(rows, tcfg.group_size, str(tcfg.negatives))
    corpus = load_corpus(cfg.data.path)
    passage_of = dict(zip(corpus["doc_id"].to_pylist(), passage_texts(corpus), strict=True))
    steps_per_epoch = (
        len(shard(len(rows), 0, cfg.seed, rank, world, tcfg.batch_size)) // tcfg.grad_accum
    )
    rows_per_step = world * tcfg.batch_size * tcfg.grad_accum

    # --- model: from the latest checkpoint when Ray restarts us, else from model.name.
    resume = ray.train.get_checkpoint()
    start_step, epoch, epoch_rows = 0, 0, 0
    if resume is not None:
        with resume.as_directory() as ckpt_dir:
            info = checkpoint.read(ckpt_dir)
            model = checkpoint.load_model(ckpt_dir, cfg.model)
            tokenizer = checkpoint.load_tokenizer(ckpt_dir)
            start_step, epoch = info.step, info.epoch
            # Position in rows, not steps: an elastic restart may have a different world size.
            epoch_rows = info.epoch_rows
            if epoch_rows is None:  # older checkpoint: same world size assumed
                epoch_rows = (start_step - epoch * steps_per_epoch) * rows_per_step
    else:
        from raydr.model.encoder import DualEncoder

        model = DualEncoder.from_config(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
    # Steps left at this world size: the rest of this epoch, then whole epochs. With a fixed
    # world size this is steps_per_epoch * epochs, whatever step we resume at.
    left_in_epoch = (len(rows) - epoch_rows) // rows_per_step
    total_steps = tcfg.max_steps or (
        start_step + left_in_epoch + steps_per_epoch * (tcfg.epochs - epoch - 1)
    )
    ddp_model = ray.train.torch.prepare_model(model)
    loss_fn = InfoNCELoss(tcfg.temperature, tcfg.cross_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler = get_scheduler(
        tcfg.schedule if tcfg.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=math.ceil(tcfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    if resume is not None:
        with resume.as_directory() as ckpt_dir:
            checkpoint.load_training_state(ckpt_dir, optimizer, scheduler)

    def tokenize(texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    # --- the loop
    t_start = time.perf_counter()
    step = start_step
    ddp_model.train()
    t_last, pairs_since = time.perf_counter(), 0
    while step < total_steps:
        # On resume, skip the rows this epoch already consumed.
        batches = shard(len(rows), epoch, cfg.seed, rank, world, tcfg.batch_size, epoch_rows)
        for i in range(len(batches) // tcfg.grad_accum * tcfg.grad_accum):
            idx = batches[i]
            epoch_rows += world * tcfg.batch_size
            groups = [sample_group(rows[j], int(j), epoch, cfg.seed, tcfg.group_size) for j in idx]
            q_ids, q_mask = tokenize([rows[j].query for j in idx], cfg.model.query_max_length)
            p_ids, p_mask = tokenize(
                [passage_of[d] for g in groups for d in g], cfg.model.passage_max_length
            )
            with autocast(device, dtype):
                q, p = ddp_model(q_ids, q_mask, p_ids, p_mask)
                # Mean over accumulated micro-batches: each contributes 1/grad_accum.
                loss = loss_fn(q.float(), p.float()) / tcfg.grad_accum
            loss.backward()
            pairs_since += len(idx) * world
            if (i + 1) % tcfg.grad_accum:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if rank == 0 and (step % tcfg.log_every == 0 or step == 1):
                # Plain print: Ray forwards worker stdout to the driver and the job logs.
                print(
                    f"step {step}/{total_steps} epoch {epoch} loss {float(loss) * tcfg.grad_accum:.4f} "
                    f"lr {scheduler.get_last_lr()[0]:.2e}",
                    flush=True,
                )
            if step % tcfg.checkpoint_every == 0 or step == total_steps:
                now = time.perf_counter()
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(loss.detach()) * tcfg.grad_accum,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "pairs_per_s": pairs_since / (now - t_last),
                    "resumed_from_step": start_step,
                    "elapsed_s": now - t_start,
                    "reported_at": time.time(),  # wall clock, to line up with ledger rows
                    "negatives_per_query": loss_fn.negatives_per_query(
                        tcfg.batch_size, tcfg.group_size, world
                    ),
                    "world_size": world,
                }
                if rank == 0 and loop_config.get("report_validation"):
                    metrics.update(_latest_validation(loop_config, cfg, step))
                _report(
                    metrics,
                    rank,
                    model,
                    tokenizer,
                    cfg,
                    (step, epoch, epoch_rows),
                    optimizer,
                    scheduler,
                )
                if rank == 0 and loop_config.get("pool"):
                    _submit(loop_config, step)
                elif rank == 0 and loop_config.get("inline"):
                    _validate_inline(loop_config, step)
                t_last, pairs_since = time.perf_counter(), 0
            if step >= total_steps:
                break
        epoch, epoch_rows = epoch + 1, 0


def pin_cpus(cpus: list[int] | None) -> None:
    """Pin this process to ``cpus`` (Linux), so training and validation stop competing."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
        torch.set_num_threads(len(cpus))


_inline_validator = None


def _validate_inline(loop_config: dict[str, Any], step: int) -> None:
    """The naive loop: validate right here and make every worker wait (benchmark baseline)."""
    global _inline_validator
    import json

    from raydr.training import checkpoint
    from raydr.validation.ledger import Ledger
    from raydr.validation.validator import Validator

    vdir = loop_config["inline"]
    if _inline_validator is None:
        subset = json.loads((Path(vdir) / "subset.json").read_text())["doc_ids"]
        _inline_validator = Validator(
            loop_config["config"], subset, threads=torch.get_num_threads()
        )
    path = f"{loop_config['storage']}/{loop_config['config']['name']}/{checkpoint.dir_name(step)}"
    result = _inline_validator.validate(path)
    Ledger(Path(vdir) / "ledger.jsonl").append(
        {
            "trial": loop_config["trial"],
            "step": step,
            "checkpoint": path,
            "status": "done",
            "metrics": result,
        }
    )


def _latest_validation(loop_config: dict[str, Any], cfg: RaydrConfig, step: int) -> dict[str, Any]:
    """The newest validated metrics of this trial's own checkpoints, with the step they were
    measured on (Tune's time attribute), so the scheduler never sees a stale value as new."""
    import ray

    from raydr.validation.pool import NAMESPACE

    pool = ray.get_actor(loop_config["pool"], namespace=NAMESPACE)
    # An immediate lookup in the pool's ledger, not a wait for any validation to finish.
    latest = ray.get(pool.latest.remote(loop_config["trial"]))
    if latest is None:
        return {}
    out = {name: latest["metrics"][name] for name in cfg.eval.metrics}
    out.update(validated_step=latest["step"], validation_lag_steps=step - latest["step"])
    return out


def _submit(loop_config: dict[str, Any], step: int) -> None:
    """Push the committed checkpoint to the validation pool; fire and forget, never wait."""
    import ray

    from raydr.training import checkpoint
    from raydr.validation.pool import NAMESPACE

    pool = ray.get_actor(loop_config["pool"], namespace=NAMESPACE)
    path = f"{loop_config['storage']}/{loop_config['config']['name']}/{checkpoint.dir_name(step)}"
    pool.submit.remote(loop_config["trial"], step, path)


def _report(metrics, rank, model, tokenizer, cfg, position, optimizer, scheduler) -> None:
    """Rank 0 writes the checkpoint; every rank must call ``report`` (Ray Train's contract).

    ``position``: (step, epoch, rows of this epoch consumed), where a resume continues."""
    import ray.train

    from raydr.training import checkpoint

    if rank != 0:
        ray.train.report(metrics)
        return
    step, epoch, epoch_rows = position
    with tempfile.TemporaryDirectory(prefix="raydr-ckpt-") as tmp:
        path = os.path.join(tmp, "checkpoint")
        checkpoint.write(
            path,
            model,
            tokenizer,
            cfg.model_dump(mode="json"),
            step=step,
            epoch=epoch,
            epoch_rows=epoch_rows,
            optimizer=optimizer,
            scheduler=scheduler,
        )
        # Ray copies the folder into storage_path and commits it before report returns.
        # A step-named folder gives every checkpoint a stable, predictable URI in storage:
        # validators and ledgers key on (trial, step), and reruns never collide.
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(path),
            checkpoint_dir_name=checkpoint.dir_name(step),
        )
