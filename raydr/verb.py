"""One verb of the command line, declared by the module that implements it.

``raydr/commands/*`` and ``raydr/bench/*`` each declare ``VERBS``; ``raydr.cli`` finds them by
walking those packages, so adding a command or a benchmark never touches the CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    """``raydr [bench] NAME …``: its help line, its arguments, and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
