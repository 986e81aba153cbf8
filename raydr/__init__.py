"""raydr: train dense retrievers on Ray and validate their checkpoints asynchronously."""

from __future__ import annotations

from raydr.errors import RaydrError

__version__ = "0.1.0"
__all__ = ["RaydrError", "__version__"]
