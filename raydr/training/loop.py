"""The per-worker training loop: one plain function, top to bottom.

Ray glue stays at the edges: ``ray.train`` gives rank, world size and the checkpoint to resume
from, and receives reports. Validation is somebody else's job: after Ray commits a checkpoint,
rank 0 tells ``ctx.hook`` and carries on. Everything between is ordinary PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from raydr.config import RaydrConfig
from raydr.training import checkpoint, plan
from raydr.training.context import LoopContext

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker; ``loop_config["ctx"]`` is a ``LoopContext``."""
    import numpy as np
    import ray.train
    import ray.train.torch

    from raydr.data.groups import sample_group, shard
    from raydr.data.store import PassageStore, RowStore
    from raydr.dist import pin_cpus
    from raydr.losses import MemoryBank, build_loss
    from raydr.model.encoder import resolve_dtype
    from raydr.retrieval.encode import autocast
    from raydr.training.gradcache import grad_cache_step

    ctx: LoopContext = loop_config["ctx"]
    cfg = ctx.cfg
    tcfg = cfg.training
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    # Ray starts workers with one torch thread; use the CPUs this worker reserved.
    torch.set_num_threads(ctx.threads)
    pin_cpus(tcfg.cpus)
    _seed(cfg.seed, rank)
    device = ray.train.torch.get_device()
    dtype = resolve_dtype(cfg.model.dtype, device)

    # --- data (raydr.data.store): a worker reads the rows and passages of its batches, never
    # the whole corpus; ``shard`` gives each rank a disjoint slice. Docs are positions in the
    # store, the same on every rank, so losses can tell which passages are judged relevant to
    # which query (a duplicate positive is never a negative), across workers too.
    rows, passages = RowStore(ctx.data.rows), PassageStore(ctx.data.passages)
    source = ctx.negatives  # None: the static negatives of training.negatives

    # Rank 0 joins the driver's tracking run (raydr.tracking) and logs what it reports.
    tracker = ctx.tracking.join_on_worker() if ctx.tracking is not None and rank == 0 else None

    # --- model: from the latest checkpoint when Ray restarts us, else from model.name.
    resume = ray.train.get_checkpoint()
    model, tokenizer, (start_step, epoch, epoch_rows) = _starting_point(
        cfg, resume, len(rows), world
    )
    total_steps = plan.remaining_steps(tcfg, len(rows), world, start_step, epoch, epoch_rows)
    ddp_model = ray.train.torch.prepare_model(model)
    loss_fn = build_loss(tcfg)
    mcfg = tcfg.memory_bank
    # Rows of the bank this world size uses, and what the bank keeps for the smallest one.
    bank_rows, bank_capacity = plan.bank_rows(tcfg, world)
    bank = MemoryBank(bank_capacity, mcfg.warmup_steps) if bank_capacity else None
    optimizer, scheduler = _optimizer(model, tcfg, total_steps)
    # A refit stops where dev's pick stopped, on the schedule that pick was trained on.
    last = plan.last_step(tcfg, total_steps)
    if resume is not None:
        with resume.as_directory() as ckpt_dir:
            state = checkpoint.load_training_state(ckpt_dir, optimizer, scheduler)
        if bank is not None:  # every rank held the same bank; rank 0 saved it
            bank.load_state_dict(state.get("bank") or {}, device)

    def tokenize(texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    # --- the loop
    step, meter = start_step, _Meter()
    ddp_model.train()
    while step < last:
        # On resume, skip the rows this epoch already consumed.
        batches = shard(len(rows), epoch, cfg.seed, rank, world, tcfg.batch_size, epoch_rows)
        for i in range(len(batches) // tcfg.grad_accum * tcfg.grad_accum):
            if i % tcfg.grad_accum == 0:
                _seed(cfg.seed, rank, step + 1)
            idx = batches[i]
            batch = [rows[j] for j in idx]
            epoch_rows += world * tcfg.batch_size
            if source is None:
                groups = [
                    sample_group(row, int(j), epoch, cfg.seed, tcfg.group_size)
                    for row, j in zip(batch, idx, strict=True)
                ]
            else:
                source.poll()  # picks up a newer index if one has landed; never waits
                groups = [
                    _dynamic_group(row, int(j), epoch, step, cfg, source, passages)
                    for row, j in zip(batch, idx, strict=True)
                ]
            q_ids, q_mask = tokenize([row.query for row in batch], cfg.model.query_max_length)
            docs = np.array([d for g in groups for d in g], dtype=np.int64)
            p_ids, p_mask = tokenize(passages.texts(docs), cfg.model.passage_max_length)
            p_doc = torch.from_numpy(docs).to(device)  # (B*G,)
            q_pos = _judged([row.positives for row in batch], device)  # (B, P)
            active = bank is not None and bank.active(step + 1)
            in_bank = bank.newest(bank_rows) if active else None
            last_micro = (i + 1) % tcfg.grad_accum == 0
            negatives = {"p_doc": p_doc, "q_pos": q_pos, "bank": in_bank}
            if tcfg.grad_cache_chunk:  # the same loss and gradients, one chunk's activations
                loss, p = grad_cache_step(
                    ddp_model,
                    loss_fn,
                    (q_ids, q_mask, p_ids, p_mask),
                    tcfg.grad_cache_chunk,
                    scale=1 / tcfg.grad_accum,
                    sync=last_micro,
                    autocast=lambda: autocast(device, dtype),
                    **negatives,
                )
            else:
                # DDP all-reduces gradients after every backward; skip that until the last
                # micro-batch. The cross-batch gather's own collectives still run (they are
                # part of the loss), so every rank must take the same number of micro-batches.
                with contextlib.nullcontext() if last_micro else _no_sync(ddp_model):
                    with autocast(device, dtype):
                        q, p = ddp_model(q_ids, q_mask, p_ids, p_mask)
                        # Mean over accumulated micro-batches: each contributes 1/grad_accum.
                        loss = loss_fn(q.float(), p.float(), **negatives) / tcfg.grad_accum
                    loss.backward()
            if bank is not None:  # after the loss: a step never scores against itself
                bank.push(p.detach(), p_doc)
            meter.add(float(loss.detach()), pairs=len(idx) * world)
            if not last_micro:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_loss = meter.end_step()
            if rank == 0 and ctx.hook is not None:
                ctx.hook.progress(step)  # where the run is, should a scheduler stop it
            if rank == 0 and meter.due(step, tcfg.log_every):
                # A log record, not print: Ray Train tees a worker's print to stdout *and* its
                # logger (stderr), so the driver showed every print twice. Its worker logger
                # sends a record once to the console (forwarded to the driver) and its log file.
                log.info(
                    "step %d/%d epoch %d loss %.4f lr %.2e %s%s",
                    step,
                    last,
                    epoch,
                    step_loss,
                    scheduler.get_last_lr()[0],
                    meter.eta(step - start_step, last - step),
                    _index_note(source, step),
                )
            if step % tcfg.checkpoint_every == 0 or step == last:
                metrics = meter.metrics(step, epoch, scheduler, grad_norm, start_step, world)
                metrics["negatives_per_query"] = loss_fn.negatives_per_query(
                    tcfg.batch_size, tcfg.group_size, world, len(in_bank or ())
                )
                if source is not None:  # which index served the negatives, and how stale
                    metrics.update(source.describe(step))
                state = (model, tokenizer, optimizer, scheduler, bank)
                _report(ctx, rank, metrics, state, (step, epoch, epoch_rows))
                if tracker is not None:
                    ctx.tracking.log_report(tracker, metrics, step)
                if ctx.hook is not None and step < last:
                    ctx.hook.hold(step)  # a scheduler rung may want this metric first
            if step >= last:
                break
        epoch, epoch_rows = epoch + 1, 0
    if tracker is not None:
        ctx.tracking.leave_on_worker(tracker)


def _seed(seed: int, rank: int, step: int = 0) -> None:
    """Seed Python, numpy and torch (dropout) from (seed, rank, step): same seed, same run.

    Reseeding every step makes dropout a pure function of the step, like sharding and group
    sampling (functions of seed, epoch and row): a run resumed from a checkpoint, on any rank,
    draws exactly what the uninterrupted run drew, with no generator state to checkpoint (a
    checkpoint written by rank 0 could only carry rank 0's)."""
    import random

    import numpy as np

    key = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(key)
    np.random.seed(key)
    torch.manual_seed(key)


def _index_note(source, step: int) -> str:
    """', negatives from the index of step 20 (5 steps stale)' for the progress line."""
    if source is None:
        return ""
    info = source.describe(step)
    if info["index_step"] < 0:
        return ", negatives: static or random until the first index lands"
    return f", negatives from the index of step {info['index_step']} ({info['staleness_steps']} steps stale)"


def _dynamic_group(row, j: int, epoch: int, step: int, cfg, source, passages) -> list[int]:
    """Positive first, then negatives from the newest published index. Before the first index
    lands: the row's static negatives when mined, else docs drawn at random."""
    import numpy as np

    from raydr.data.groups import sample_group

    need = cfg.training.group_size - 1
    positive = sample_group(row, j, epoch, cfg.seed, 1)[0]
    rng = np.random.default_rng([cfg.seed, epoch, j, step])
    exclude = {*row.positives, row.query_doc} - {-1}  # BEIR: the query's own id is no negative
    negatives = source.draw(row.query_id, exclude, need, rng)
    if negatives is None and len(set(row.negatives)) >= need:
        negatives = sample_group(row, j, epoch, cfg.seed, need + 1)[1:]
    if negatives is None:
        # Distinct positions drawn without a pass over the corpus (numpy samples few of many
        # by a set, not a permutation); enough that the excluded ones can be dropped.
        picks = rng.choice(
            len(passages), size=min(len(passages), need + len(exclude)), replace=False
        )
        negatives = [int(k) for k in picks if int(k) not in exclude][:need]
    return [positive, *negatives]


def _judged(positives: list[tuple[int, ...]], device) -> torch.Tensor:
    """Each query's judged-relevant doc positions, padded with -1 → (B, P)."""
    ids = [list(pos) for pos in positives]
    width = max(map(len, ids))
    return torch.tensor([row + [-1] * (width - len(row)) for row in ids], device=device)


def _starting_point(cfg: RaydrConfig, resume, num_rows: int, world: int):
    """→ (model, tokenizer, (step, epoch, rows of this epoch consumed)) to continue from."""
    if resume is None:
        model, tokenizer = checkpoint.load(cfg.model.name, cfg.model)
        return model, tokenizer, (0, 0, 0)
    tcfg = cfg.training
    with resume.as_directory() as ckpt_dir:
        info = checkpoint.read(ckpt_dir)
        model, tokenizer = checkpoint.load(ckpt_dir, cfg.model)
    # Position in rows, not steps: an elastic restart may have a different world size.
    epoch_rows = info.epoch_rows
    if epoch_rows is None:  # older checkpoint: same world size assumed
        per_epoch = plan.steps_per_epoch(num_rows, world, tcfg.batch_size, tcfg.grad_accum)
        epoch_rows = (
            (info.step - info.epoch * per_epoch) * world * tcfg.batch_size * tcfg.grad_accum
        )
    return model, tokenizer, (info.step, info.epoch, epoch_rows)


def _optimizer(model, tcfg, total_steps: int):
    """AdamW and the learning-rate schedule (warm-up, then linear, cosine or constant)."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler = get_scheduler(
        tcfg.schedule if tcfg.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=math.ceil(tcfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def _no_sync(ddp_model):
    # A single worker's model is not wrapped in DDP, and has nothing to skip.
    return ddp_model.no_sync() if hasattr(ddp_model, "no_sync") else contextlib.nullcontext()


@dataclass
class _Meter:
    """Loss of the current step (summed over its micro-batches) and throughput since the last
    report."""

    t_start: float = field(default_factory=time.perf_counter)
    t_last: float = field(default_factory=time.perf_counter)
    t_print: float = 0.0
    pairs: int = 0
    micro_loss: float = 0.0
    step_loss: float = 0.0
    every_s: float = 30.0  # a progress line at least this often, whatever log_every says

    def add(self, loss: float, pairs: int) -> None:
        self.micro_loss += loss  # each micro-batch loss is already divided by grad_accum
        self.pairs += pairs

    def due(self, step: int, log_every: int) -> bool:
        """Print now: every ``log_every`` steps, the first, or after ``every_s`` of silence."""
        now = time.perf_counter()
        if step == 1 or step % log_every == 0 or now - self.t_print >= self.every_s:
            self.t_print = now
            return True
        return False

    def eta(self, done: int, left: int) -> str:
        """'8.1 s/step, 6 min 5 s left' from the steps this run has taken so far."""
        per_step = (time.perf_counter() - self.t_start) / max(1, done)
        minutes, seconds = divmod(round(per_step * left), 60)
        return f"({per_step:.1f} s/step, {minutes} min {seconds} s left)"

    def end_step(self) -> float:
        self.step_loss, self.micro_loss = self.micro_loss, 0.0
        return self.step_loss

    def metrics(self, step, epoch, scheduler, grad_norm, start_step, world) -> dict[str, Any]:
        now = time.perf_counter()
        metrics = {
            "step": step,
            "epoch": epoch,
            "loss": self.step_loss,  # mean over the step's micro-batches
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "pairs_per_s": self.pairs / (now - self.t_last),
            "resumed_from_step": start_step,
            "elapsed_s": now - self.t_start,
            "reported_at": time.time(),  # wall clock, to line up with ledger rows
            "world_size": world,
            "peak_rss_mb": _peak_rss_mb(),
        }
        self.t_last, self.pairs = time.perf_counter(), 0
        return metrics


def _peak_rss_mb() -> float | None:
    """This worker's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(ctx: LoopContext, rank: int, metrics: dict[str, Any], state, position) -> None:
    """Rank 0 writes the checkpoint; every rank must call ``report`` (Ray Train's contract).
    Once Ray has committed it, rank 0 hands it to the hook.

    ``state``: (model, tokenizer, optimizer, scheduler, memory bank or None); ``position``:
    (step, epoch, rows of this epoch consumed), where a resume continues."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    cfg = ctx.cfg
    model, tokenizer, optimizer, scheduler, bank = state
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
            extra_state=None if bank is None else {"bank": bank.state_dict()},
        )
        # Ray copies the folder into storage and commits it before report returns. A
        # step-named folder gives every checkpoint a stable URI: validators and ledgers key on
        # (trial, step), and reruns never collide.
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(path),
            checkpoint_dir_name=checkpoint.dir_name(step),
        )
    if ctx.hook is not None:
        ctx.hook.on_checkpoint(step, checkpoint.uri(ctx.storage, cfg.name, step))
