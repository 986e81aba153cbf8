"""Test and benchmark support, not product: where a process's memory is (Linux ``/proc``)."""

from __future__ import annotations

from pathlib import Path


def mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process ("" for anonymous memory, e.g. the heap:
    "[heap]"), from ``/proc/self/maps``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) > 5 else ""
    return ""


def private_mb() -> float:
    """This process's anonymous (private, not file-backed) resident memory, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")
