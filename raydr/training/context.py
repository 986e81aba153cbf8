"""What the trainer hands each worker's loop: the config, where checkpoints go, and a hook.

The loop knows nothing about validation or tuning. It calls a ``CheckpointHook`` that the layer
above supplies (``raydr.validation.client``: the pool client or the inline validator), and it
ships no untyped flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from raydr.config import RaydrConfig


class CheckpointHook(Protocol):
    """Called on rank 0 only. Implementations must be picklable: Ray ships them to workers."""

    def on_checkpoint(self, step: int, uri: str) -> None:
        """Ray has committed the checkpoint of ``step`` at ``uri``. Must not wait for validation."""

    def validated(self, step: int) -> dict[str, Any]:
        """The newest validated metrics of this run, projected for a report made at ``step``
        (metric values plus the step they were measured on); {} while there are none."""


@dataclass(frozen=True)
class LoopContext:
    """Everything a worker's loop gets besides what ``ray.train.get_context()`` says."""

    config: dict[str, Any]  # RaydrConfig as JSON, local paths absolute
    storage: str  # Ray Train storage root: checkpoints land at <storage>/<name>/<dir_name>
    threads: int  # torch threads per worker (Ray starts workers with one)
    hook: CheckpointHook | None = None  # None: train without validation

    @property
    def cfg(self) -> RaydrConfig:
        return RaydrConfig.model_validate(self.config)
