"""What every benchmark records: the machine it ran on, and a JSON + PNG written atomically."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raydr import atomic


def machine() -> dict[str, Any]:
    import torch

    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu and flags:
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Speeds differ about 3x between CPUs with and without bf16 matrix instructions.
        "avx512_bf16": "avx512_bf16" in flags,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def peak_mb() -> float:
    """This process's peak RSS since it started its program (VmHWM). Not ``ru_maxrss``: a
    spawned child inherits the high-water mark of the parent it was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new process: its peak RSS is its own, not the bench's."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def subplots(*args: Any, **kwargs: Any):
    """``matplotlib.pyplot.subplots`` on the Agg backend: benchmarks run without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and free it."""
    import matplotlib.pyplot as plt

    out = atomic.save_figure(fig, path)
    plt.close(fig)
    return out


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    atomic.write_json(path, payload)


def publish(
    payload: dict[str, Any],
    out: Path,
    figures: dict[str, Any],
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """Write the JSON and ``plot``'s PNG beside it; print the headline ``figures``."""
    write_json(out, payload)
    plot(payload, out.with_suffix(".png"))
    for key, value in figures.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
