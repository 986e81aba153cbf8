"""The only reader and writer of raydr checkpoints: format, folder names, URIs, completeness,
and loading a model with its tokenizer (from a checkpoint or any Hugging Face folder).

A checkpoint folder describes itself and loads as it is:

    config.json, model.safetensors, tokenizer files   Hugging Face (transformers.AutoModel)
    modules.json, 1_Pooling/, 2_Normalize/            sentence-transformers (shared tower only)
    query/, passage/                                  instead of the above, for two towers
    raydr.json                                        format version, step, epoch, raydr config
    training_state.pt                                 optimizer, scheduler and RNG state

Folders are written complete under a temporary name and renamed, so a reader (a resuming
trainer, a validator in watch mode) never sees half of one. Retention (which checkpoints go is
decided by ``validation/retention.py``) deletes a folder whole (``delete``) or drops only its
``training_state.pt`` (``strip_training_state``), and ``forget_deleted`` keeps Ray Train's own
record of the run's checkpoints in step with what is on disk, so a rerun still resumes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raydr import atomic
from raydr.atomic import atomic_dir
from raydr.errors import RaydrError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "raydr.json"
STATE = "training_state.pt"
_DIR_PREFIX = "checkpoint_step_"
_TOWERS = ("query", "passage")  # two-tower layout: a Hugging Face folder per tower
# Weight files that make a foreign (non-raydr) Hugging Face folder loadable.
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def dir_name(step: int) -> str:
    """The folder name of the checkpoint at ``step`` inside a run's storage path."""
    return f"{_DIR_PREFIX}{step:07d}"


def uri(storage: str, run_name: str, step: int) -> str:
    """Where Ray Train commits the checkpoint of ``step``: ``<storage>/<run>/<dir_name>``.

    ``storage`` is a local absolute path or a URI (s3://...); the result is the same kind."""
    return f"{storage.rstrip('/')}/{run_name}/{dir_name(step)}"


def step_of(folder: str | Path) -> int:
    """The training step of a checkpoint folder: its own record, else the number in its name
    (foreign folders such as ``checkpoint-500``), else 0."""
    folder = Path(folder)
    if (folder / META).is_file():
        return read(folder).step
    numbers = re.findall(r"\d+", folder.name)
    return int(numbers[-1]) if numbers else 0


def is_raydr(folder: str | Path) -> bool:
    """True for a folder raydr wrote (complete by construction: it appears by atomic rename)."""
    return (Path(folder) / META).is_file()


def looks_loadable(folder: str | Path) -> bool:
    """A raydr checkpoint, or a Hugging Face folder (one or two towers) with config and weights."""
    folder = Path(folder)
    if is_raydr(folder):
        return True
    root = folder / _TOWERS[0] if (folder / _TOWERS[0]).is_dir() else folder
    return (root / "config.json").is_file() and any((root / w).is_file() for w in _WEIGHTS)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    epoch: int
    config: dict[str, Any]
    epoch_rows: int | None = None  # training rows this epoch consumed (None: older checkpoint)


def write(
    directory: str | Path,
    model,
    tokenizer,
    config: dict[str, Any],
    *,
    step: int,
    epoch: int,
    epoch_rows: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically; ``model`` is a DualEncoder (unwrapped)."""
    directory = Path(directory)
    with atomic_dir(directory, overwrite=True) as tmp:
        base = (config.get("model") or {}).get("name")
        if model.shared:
            model.query_tower.save_pretrained(tmp)
            _store_pooler(tmp, base)
            tokenizer.save_pretrained(tmp)
            _write_sentence_transformers_files(tmp, model, config)
        else:
            for tower, name in ((model.query_tower, _TOWERS[0]), (model.passage_tower, _TOWERS[1])):
                tower.save_pretrained(tmp / name)
                _store_pooler(tmp / name, base)
            tokenizer.save_pretrained(tmp / _TOWERS[0])
        state = {
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            **(extra_state or {}),
        }
        torch.save(state, tmp / STATE)
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "epoch": epoch,
            "epoch_rows": epoch_rows,
            "config": config,
            # Ray copies a checkpoint into storage file by file, in no set order: a reader there
            # knows it is complete only when every file listed here is present at its size.
            "files": _file_sizes(tmp),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return directory


_POOLER = ("pooler.dense.weight", "pooler.dense.bias")


def _store_pooler(folder: Path, base: str | None) -> None:
    """Give a saved BERT-style tower the pooler its config implies.

    raydr trains without the pooler (mean/CLS pooling never uses it, and an unused module breaks
    DDP), but ``transformers.AutoModel`` and ``sentence-transformers`` build one by default and
    would report its weights MISSING and "newly initialized", which reads as a broken model.
    Store the base model's pooler as it was (or, where the base has none, a seeded initial one),
    so the folder loads with nothing missing. It is never trained and raydr never uses it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    hf_config = json.loads((folder / "config.json").read_text())
    if hf_config.get("model_type") not in {"bert", "roberta"} or not weights.is_file():
        return
    state = load_file(weights)
    if all(k in state for k in _POOLER):
        return
    hidden = int(hf_config["hidden_size"])
    pooler: dict[str, torch.Tensor] = {}
    if base:
        from raydr.model.encoder import resolve_model_path

        base_weights = Path(resolve_model_path(base)) / "model.safetensors"
        if base_weights.is_file():
            with safe_open(str(base_weights), "pt") as fh:
                names = set(fh.keys())
                if names.issuperset(_POOLER):
                    pooler = {k: fh.get_tensor(k) for k in _POOLER}
    if pooler.get(_POOLER[0]) is None or pooler[_POOLER[0]].shape != (hidden, hidden):
        generator = torch.Generator().manual_seed(0)
        std = float(hf_config.get("initializer_range", 0.02))
        pooler = {
            _POOLER[0]: torch.randn(hidden, hidden, generator=generator) * std,
            _POOLER[1]: torch.zeros(hidden),
        }
    dtype = next(iter(state.values())).dtype
    state.update({k: v.to(dtype).contiguous() for k, v in pooler.items()})
    save_file(state, str(weights), metadata={"format": "pt"})


def _file_sizes(root: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``root`` except the record itself."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != META
    }


def missing_files(directory: str | Path, meta: dict[str, Any]) -> list[str]:
    """Files the record lists that are absent or not yet at their size (none for checkpoints
    written before records listed their files)."""
    directory = Path(directory)
    wrong = []
    for name, size in (meta.get("files") or {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            wrong.append(name)
    return wrong


def is_complete(folder: str | Path) -> bool:
    """A raydr checkpoint whose record is readable and whose listed files are all in place."""
    try:
        meta = json.loads((Path(folder) / META).read_text())
    except (OSError, ValueError):
        return False  # absent, or still being copied
    return isinstance(meta, dict) and not missing_files(folder, meta)


def _write_sentence_transformers_files(root: Path, model, config: dict[str, Any]) -> None:
    # Lets sentence_transformers.SentenceTransformer(root) rebuild the same pooling/normalising.
    mcfg = config.get("model", {})
    dim = model.query_tower.config.hidden_size
    pooling = mcfg.get("pooling", "mean")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if mcfg.get("normalize", True):
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (root / "2_Normalize").mkdir()
    (root / "modules.json").write_text(json.dumps(modules, indent=2))
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": mcfg.get("passage_max_length", 256), "do_lower_case": False})
    )
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": dim,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )


def read(directory: str | Path) -> CheckpointInfo:
    """Check a checkpoint folder is complete and return what it says about itself."""
    directory = Path(directory)
    meta_path = directory / META
    if not directory.is_dir():
        raise RaydrError(f"{directory}: checkpoint folder not found")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise RaydrError(f"{meta_path}: missing; not a complete raydr checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RaydrError(f"{meta_path}: corrupted ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise RaydrError(f"{meta_path}: expected format_version {FORMAT_VERSION}")
    for key in ("step", "epoch", "config"):
        if key not in meta:
            raise RaydrError(f"{meta_path}: field {key!r} is missing")
    wrong = missing_files(directory, meta)
    if wrong:
        raise RaydrError(
            f"{directory}: incomplete checkpoint: {len(wrong)} of the files {META} lists are "
            f"missing or short (e.g. {wrong[0]}); is it still being copied?"
        )
    weights = [directory / "model.safetensors", directory / _TOWERS[0] / "model.safetensors"]
    if not any(w.is_file() for w in weights):
        raise RaydrError(f"{directory}: no model.safetensors; the checkpoint is incomplete")
    rows = meta.get("epoch_rows")
    return CheckpointInfo(
        directory,
        int(meta["step"]),
        int(meta["epoch"]),
        meta["config"],
        int(rows) if isinstance(rows, int) else None,
    )


def export(directory: str | Path, out: str | Path) -> Path:
    """Copy a checkpoint's model files to ``out`` (atomically): what a user loads with
    ``transformers`` or ``sentence-transformers``, without the state kept only for resuming."""
    import shutil

    directory = Path(directory)
    with atomic_dir(out, overwrite=True) as tmp:
        for item in directory.iterdir():
            if item.name == STATE:
                continue  # optimizer state is for resuming, not for using the model
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        if (tmp / META).is_file():  # the export's record lists what the export holds
            meta = json.loads((tmp / META).read_text())
            meta["files"] = _file_sizes(tmp)
            (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(out)


def base_model(directory: str | Path) -> str:
    """The model a checkpoint's training started from (its ``model.name``), as a folder."""
    from raydr.model.encoder import resolve_model_path

    name = (read(directory).config.get("model") or {}).get("name")
    if not name:
        raise RaydrError(f"{Path(directory) / META}: the config names no model.name")
    return resolve_model_path(name)


def _tower_folders(folder: Path) -> list[Path]:
    """Where a model folder keeps its weights: itself, or its query/ and passage/ towers."""
    towers = [folder / t for t in _TOWERS]
    return towers if all(t.is_dir() for t in towers) else [folder]


def _tower_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in ("model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".bin"):
                return torch.load(path, map_location="cpu", weights_only=True)
            return load_file(str(path))
        except Exception as exc:  # each library raises its own types for damaged files
            raise RaydrError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
    raise RaydrError(
        f"{folder}: no model.safetensors or pytorch_model.bin (sharded weights cannot be blended)"
    )


def blend(
    sources: list[str | Path], weights: list[float], out: str | Path, record: dict[str, Any]
) -> Path:
    """Write θ = Σ wᵢ·θᵢ over ``sources`` (weight-space ensembling: a WiSE-FT mix of a
    fine-tuned checkpoint with its base model, or a soup of checkpoints) as a checkpoint at
    ``out``, atomically.

    ``sources[0]`` is a raydr checkpoint: the blend takes its files (tokenizer, config,
    sentence-transformers modules, record) and its dtype; the others are raydr checkpoints or
    Hugging Face folders of the same architecture (a one-tower base serves both towers of a
    two-tower checkpoint). The pooler, which raydr stores but never trains, is the first
    source's. ``record`` is added to the blend's ``raydr.json`` under ``blend``. Nothing is
    loaded on a GPU: the cost is one pass over the weights, and encoding is unchanged."""
    import shutil

    from safetensors.torch import save_file

    if len(sources) != len(weights) or not sources:
        raise ValueError("one weight per source")
    first = Path(sources[0])
    read(first)  # complete, or one clear error
    towers = _tower_folders(first)
    with atomic_dir(out, overwrite=True) as tmp:
        for item in first.iterdir():
            if item.name not in {STATE, META, *_TOWERS, *_WEIGHTS}:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        for tower in towers:
            template = _tower_weights(tower)
            mixed = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in template.items()}
            for source, w in zip(sources, weights, strict=True):
                state = _tower_weights(_source_tower(Path(source), tower.name, len(towers)))
                _check_same_architecture(template, state, Path(source), first)
                for key, value in mixed.items():
                    if key in _POOLER or not template[key].is_floating_point():
                        continue  # never trained / integer buffers: the first source's
                    value.add_(state[key].to(torch.float32), alpha=float(w))
            blended = {
                k: (v.to(template[k].dtype) if template[k].is_floating_point() else template[k])
                for k, v in mixed.items()
            }
            blended.update({k: template[k] for k in _POOLER if k in template})
            dest = tmp if len(towers) == 1 else tmp / tower.name
            if dest != tmp:
                shutil.copytree(
                    tower, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
                )
            save_file(
                {k: v.contiguous() for k, v in blended.items()},
                str(dest / "model.safetensors"),
                metadata={"format": "pt"},
            )
        meta = json.loads((first / META).read_text())
        meta["blend"] = record
        meta["files"] = _file_sizes(tmp)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(out)


def _source_tower(source: Path, tower: str, n_towers: int) -> Path:
    if n_towers == 1:
        return source
    return source / tower if (source / tower).is_dir() else source  # a one-tower base


def _check_same_architecture(
    template: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: Path, first: Path
) -> None:
    for key, value in template.items():
        if key in _POOLER:
            continue
        other = state.get(key)
        if other is None or other.shape != value.shape:
            found = "absent" if other is None else f"shape {tuple(other.shape)}"
            raise RaydrError(
                f"{source}: not the architecture of {first}: tensor {key!r} is {found}, "
                f"expected shape {tuple(value.shape)}"
            )


def listed(run_dir: str | Path) -> list[Path]:
    """The raydr checkpoint folders of one Ray Train run, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{_DIR_PREFIX}*") if p.is_dir() and is_raydr(p))


def size_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (a checkpoint, a run, a search's storage); 0 if absent."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _local(path: str | Path) -> Path | None:
    """A checkpoint path retention may touch: local, and a raydr checkpoint (never a folder of
    another trainer that ``raydr validate --watch`` was pointed at)."""
    if "://" in str(path):
        return None  # cloud storage: its own lifecycle rules apply, raydr does not delete there
    folder = Path(path)
    return folder if is_raydr(folder) else None


def delete(path: str | Path) -> int:
    """Delete a checkpoint whole: gone from sight in one rename, so nobody loads half of it.
    → bytes freed (0 when already gone, or not a local raydr checkpoint)."""
    folder = _local(path)
    if folder is None:
        return 0
    freed = size_bytes(folder)
    return freed if atomic.remove_dir(folder) else 0


def strip_training_state(path: str | Path) -> int:
    """Drop a checkpoint's optimizer, scheduler and memory-bank state, keeping a model that
    ``transformers``, ``sentence-transformers`` and ``raydr best --export`` load as before.
    The record is rewritten first (atomically) without the file, then the file goes: at every
    moment the folder is a complete checkpoint. → bytes freed."""
    folder = _local(path)
    if folder is None or not (folder / STATE).is_file():
        return 0
    meta = json.loads((folder / META).read_text())
    if STATE in (meta.get("files") or {}):
        meta["files"] = {k: v for k, v in meta["files"].items() if k != STATE}
        atomic.write_text(folder / META, json.dumps(meta, indent=2, default=str) + "\n")
    freed = (folder / STATE).stat().st_size
    (folder / STATE).unlink(missing_ok=True)
    return freed


def has_training_state(path: str | Path) -> bool:
    return (Path(path) / STATE).is_file()


# Ray Train's record of a run's reported checkpoints, read when a run (re)starts.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def forget_deleted(run_dir: str | Path) -> int:
    """Drop from Ray Train's record of ``run_dir`` the checkpoints retention deleted, and
    finish any deletion a crash interrupted. Ray refuses to restart a run whose record names a
    folder that is gone; raydr never deletes the newest, so the resume point is untouched.
    → entries dropped."""
    run_dir = Path(run_dir)
    atomic.sweep_removed(run_dir)
    record = run_dir / RAY_SNAPSHOT
    try:
        state = json.loads(record.read_text())
        results, indices = state["checkpoint_results"], state["checkpoint_report_indices"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # nothing committed yet, or a Ray version that keeps it elsewhere
    there = [(r, i) for r, i in zip(results, indices, strict=True) if _exists(run_dir, r)]
    dropped = len(results) - len(there)
    if dropped:
        state["checkpoint_results"] = [r for r, _ in there]
        state["checkpoint_report_indices"] = [i for _, i in there]
        atomic.write_text(record, json.dumps(state))
        log.info("%s: %d deleted checkpoints dropped from Ray's record", run_dir, dropped)
    return dropped


def _exists(run_dir: Path, result: dict[str, Any]) -> bool:
    name = result.get("checkpoint_dir_name")
    return not isinstance(name, str) or (run_dir / name).is_dir()


def load_training_state(directory: str | Path, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Restore optimizer and scheduler state in place; return the whole state dict. (No RNG
    state: the loop reseeds from (seed, rank, step) every step.)"""
    path = Path(directory) / STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise RaydrError(f"{path}: missing; cannot resume from this checkpoint") from None
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise RaydrError(
            f"{path}: corrupted, cannot resume ({type(exc).__name__}: {exc})"
        ) from None
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


def load(directory: str | Path, model_cfg):
    """A model folder → (DualEncoder, tokenizer), ready for ``retrieval.dense.DenseRetriever``.

    ``directory``: a raydr checkpoint (checked complete first), any Hugging Face folder with one
    or two towers, or a model name (the packaged MiniLM). Pooling and normalisation come from
    ``model_cfg``."""
    from raydr.model.encoder import resolve_model_path

    path = Path(resolve_model_path(str(directory)))
    if is_raydr(path):
        read(path)  # a complete raydr checkpoint, or one clear error
    model, tokenizer = load_model(path, model_cfg), load_tokenizer(path, model_cfg)
    passage = model.passage_tower or model.query_tower  # None: one shared tower
    check_lengths(model_cfg, model.query_tower.config, passage.config, path)
    return model, tokenizer


def check_model(model_cfg) -> None:
    """``model.name`` against the config, from its config files alone (the driver's check
    before any worker loads weights)."""
    from transformers import AutoConfig

    from raydr.model.encoder import resolve_model_path

    path = Path(resolve_model_path(model_cfg.name))
    towers = [path / t for t in _TOWERS] if (path / _TOWERS[0]).is_dir() else [path, path]
    try:
        query, passage = (AutoConfig.from_pretrained(str(t)) for t in towers)
    except (OSError, ValueError) as exc:
        raise RaydrError(f"model.name: {path} is not a loadable model folder ({exc})") from None
    check_lengths(model_cfg, query, passage, path)


def check_lengths(model_cfg, query_config, passage_config, where: str | Path) -> None:
    """The configured token lengths fit the towers' position embeddings; else one error naming
    the field (past them, the encoder fails deep in transformers with an index error)."""
    for field, config in (
        ("passage_max_length", passage_config),
        ("query_max_length", query_config),
    ):
        limit = getattr(config, "max_position_embeddings", None)
        if limit and config.model_type in {"roberta", "xlm-roberta", "camembert"}:
            limit -= 2  # these offset positions past the padding index
        asked = getattr(model_cfg, field)
        if limit is not None and asked > limit:
            raise RaydrError(
                f"model.{field}={asked}, but {where} has {limit} positions; expected at most "
                f"{limit}"
            )


def load_tokenizer(directory: str | Path, model_cfg=None):
    """The tokenizer saved with a model (beside the query tower for two towers).

    A raydr checkpoint must have one. A foreign weights-only folder falls back to
    ``model_cfg.name``'s tokenizer, with a warning naming both."""
    from transformers import AutoTokenizer

    from raydr.model.encoder import resolve_model_path

    directory = Path(resolve_model_path(str(directory)))
    where = directory / _TOWERS[0] if (directory / _TOWERS[0]).is_dir() else directory
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError) as exc:
        if is_raydr(directory) or model_cfg is None:
            raise RaydrError(f"{where}: cannot load the tokenizer ({exc})") from None
        log.warning(
            "%s: no loadable tokenizer (%s); using %s's, the configured model.name",
            where,
            type(exc).__name__,
            model_cfg.name,
        )
        return AutoTokenizer.from_pretrained(resolve_model_path(model_cfg.name))


def load_model(directory: str | Path, model_cfg):
    """The DualEncoder stored in a checkpoint (or any Hugging Face folder, or a model name).

    A folder without towers holds one shared tower; ``model_cfg.shared=False`` then starts two
    towers from it."""
    from raydr.model.encoder import DualEncoder, resolve_model_path

    directory = Path(resolve_model_path(str(directory)))
    query, passage = (directory / t for t in _TOWERS)
    try:
        if query.is_dir() and passage.is_dir():
            return DualEncoder.from_towers(model_cfg, str(query), str(passage))
        return DualEncoder.from_towers(
            model_cfg, str(directory), None if model_cfg.shared else str(directory)
        )
    except RaydrError:
        raise
    except Exception as exc:  # safetensors/transformers errors on truncated or foreign files
        raise RaydrError(
            f"{directory}: cannot load model weights ({type(exc).__name__}: {exc})"
        ) from None
