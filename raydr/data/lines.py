"""Numbered lines of a (possibly compressed) text file, with errors that name the line."""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from raydr.errors import RaydrError

Opener = Callable[[Path], AbstractContextManager[IO[bytes]]]


def open_by_suffix(path: Path) -> AbstractContextManager[IO[bytes]]:
    """``path`` as bytes: gunzipped when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def numbered_lines(path: Path, opener: Opener = open_by_suffix) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text with its newline) of ``path`` opened by ``opener``.

    Undecodable bytes or a broken compressed stream raise ``RaydrError`` naming the line.
    """
    n = 0
    try:
        with opener(path) as fh:
            for n, raw in enumerate(fh, 1):  # n is also read in the except below
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise RaydrError(
                        f"{path}: line {n}: not valid UTF-8 (byte {err.start + 1} of the line)"
                    ) from None
                yield n, text
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise RaydrError(f"{path}: line {n + 1}: cannot read ({err})") from None
