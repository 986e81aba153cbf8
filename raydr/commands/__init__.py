"""The verbs of ``raydr`` (one module a group, each declaring ``VERBS``): what each command
does with its parsed arguments. ``raydr.cli`` only parses and dispatches to them."""

from __future__ import annotations

import argparse
from pathlib import Path


def job_arguments(p: argparse.ArgumentParser) -> None:
    """``CONFIG [key=value …] [-q]``: the arguments every command over a job YAML takes."""
    p.add_argument("config", type=Path, help="job YAML (see jobs/)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
