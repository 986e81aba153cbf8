"""A retrieval collection built offline from Debian package descriptions, in BEIR format.

Each package is a query/document pair: the query is its one-line synopsis, the document its
long description (titled with the package name), and the query's only relevant document is
its own package (grade 1). It gives a second domain, next to SciFact, for zero-shot checks.

Input: Debian control-format files (deb822), such as apt's ``*_i18n_Translation-en`` lists
(``Package``, ``Description-en``) or ``/var/lib/dpkg/status`` (``Description``). Plain, gzip,
xz or lz4 files are read; the format is told by the first bytes, not the name. lz4 has no
stdlib reader: the ``lz4`` Python package is used when installed, else the ``lz4`` program.

A package name keeps its first stanza (in source order). Cleaning, the draw and the output
are ``raydr.data.pairs``'s: packages with a short long description go, and so do all the
``lib``/``-dev``/``-doc`` variants that share a synopsis or a description, which would make two
documents equally right for one query.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from raydr.data.lines import numbered_lines
from raydr.data.pairs import SPLIT, Pair, check_sizes, write_collection
from raydr.errors import RaydrError

APT_LISTS = Path("/var/lib/apt/lists")
APT_UPDATE = "apt-get update -o Acquire::Languages=en"

_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"
_LZ4 = b"\x04\x22\x4d\x18"  # the lz4 frame format apt writes
# Translation files say Description-en; Packages and dpkg's status file say Description.
_DESCRIPTION_FIELDS = ("description-en", "description")


@dataclass(frozen=True)
class Package:
    """One stanza's description: ``synopsis`` (its first line) and the long ``text``."""

    name: str
    synopsis: str
    text: str


def default_sources(lists_dir: Path = APT_LISTS) -> list[Path]:
    """apt's ``*Translation-en*`` lists in ``lists_dir``, sorted; ``RaydrError`` if none."""
    found = sorted(p for p in lists_dir.glob("*Translation-en*") if p.is_file())
    if not found:
        raise RaydrError(
            f"{lists_dir}: no *Translation-en* files; run `{APT_UPDATE}` first, "
            f"or pass --source FILE"
        )
    return found


def build_debian_collection(
    sources: list[Path],
    out: Path | str,
    *,
    num_queries: int = 500,
    num_docs: int = 5000,
    seed: int = 0,
    min_words: int = 30,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a BEIR folder of ``num_docs`` package descriptions and ``num_queries`` synopses.

    The queries are drawn among the documents, so each has its own package in the corpus; the
    rest are distractors. The draw is a pure function of ``seed`` and the cleaned package
    list. An existing non-empty ``out`` is refused unless ``overwrite``. Returns the counts.
    Raises ``RaydrError``.
    """
    check_sizes(num_queries, num_docs, min_words)
    if not sources:
        raise RaydrError("no source files given (expected Debian Translation-en files)")
    sources = [Path(s) for s in sources]

    first: dict[str, Package] = {}
    stanzas = 0
    for path in sources:
        for pkg in read_packages(path):
            stanzas += 1
            first.setdefault(pkg.name, pkg)  # a later stanza of the same name is ignored
    return write_collection(
        [Pair(p.name, p.synopsis, p.name, p.text) for p in first.values()],
        out,
        counts={"stanzas": stanzas, "packages": len(first)},
        what="packages",
        sources=sources,
        num_queries=num_queries,
        num_docs=num_docs,
        seed=seed,
        min_words=min_words,
        overwrite=overwrite,
        source_md=_source_md,
    )


# --- reading deb822 -------------------------------------------------------------------------


def read_packages(path: Path) -> Iterator[Package]:
    """Yield a ``Package`` per stanza of ``path`` that has a description field.

    ``RaydrError`` names the line for a malformed line or a stanza with no ``Package``, and
    the file when it holds no stanza at all.
    """
    fields: dict[str, list[str]] = {}
    current: str | None = None
    start = 0
    seen = False
    for n, raw in numbered_lines(path, _open):
        line = raw.rstrip("\r\n")
        # An empty line ends a stanza; so does a line of spaces outside a field, but inside
        # one it is a continuation line, as apt reads it.
        if not line or (current is None and not line.strip()):
            if fields:
                seen = True
                pkg = _package(path, start, fields)
                if pkg is not None:
                    yield pkg
            fields, current = {}, None
            continue
        if line[0] in " \t":
            if current is None:
                raise RaydrError(f"{path}: line {n}: continuation line with no field above it")
            fields[current].append(line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or any(c.isspace() for c in name):
            raise RaydrError(
                f"{path}: line {n}: expected 'Field: value' or a continuation line starting "
                f"with a space, got {line[:60]!r}"
            )
        current = name.lower()  # deb822 field names are case-insensitive
        if current in fields:
            raise RaydrError(f"{path}: line {n}: field {name!r} given twice in one stanza")
        if not fields:
            start = n
        fields[current] = [value.strip()]
    if fields:
        seen = True
        pkg = _package(path, start, fields)
        if pkg is not None:
            yield pkg
    if not seen:
        raise RaydrError(f"{path}: no stanzas (expected Debian control stanzas: 'Package: …')")


def _package(path: Path, line: int, fields: dict[str, list[str]]) -> Package | None:
    if "package" not in fields:
        raise RaydrError(f"{path}: line {line}: stanza has no 'Package' field")
    name = fields["package"][0]
    for field in _DESCRIPTION_FIELDS:
        if field in fields:
            synopsis, *rest = fields[field]
            return Package(name, synopsis, _long_description(rest))
    return None  # e.g. a status stanza of a package that was removed


def _long_description(lines: list[str]) -> str:
    """Continuation lines → text: drop the one leading space; a lone " ." is a blank line."""
    out = []
    for line in lines:
        body = line[1:].rstrip()
        out.append("" if body == "." else body)
    return "\n".join(out).strip("\n")


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading bytes, decompressing gzip, xz or lz4 by their magic bytes."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as err:
        raise RaydrError(f"{path}: cannot read ({err.strerror or err})") from None
    if magic.startswith(_GZIP):
        with gzip.open(path, "rb") as fh:
            yield fh
    elif magic.startswith(_XZ):
        with lzma.open(path, "rb") as fh:
            yield fh
    elif magic.startswith(_LZ4):
        with _open_lz4(path) as fh:
            yield fh
    else:
        with open(path, "rb") as fh:
            yield fh


@contextlib.contextmanager
def _open_lz4(path: Path) -> Iterator[IO[bytes]]:
    try:
        import lz4.frame  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        with lz4.frame.open(path, "rb") as fh:
            yield fh
        return
    program = shutil.which("lz4")
    if program is None:
        raise RaydrError(
            f"{path}: lz4-compressed, and neither the lz4 Python package nor the lz4 program "
            f"is installed; decompress it (lz4 -d) or pass the file uncompressed"
        )
    proc = subprocess.Popen(
        [program, "-dc", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield proc.stdout
        error = proc.stderr.read().decode(errors="replace").strip()
    finally:
        # Reached early too, when the reader stops (an error): do not leave lz4 behind.
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    if proc.returncode != 0:
        raise RaydrError(f"{path}: lz4 -d failed ({error or f'exit status {proc.returncode}'})")


# --- writing --------------------------------------------------------------------------------


def _source_md(files: list[str], report: dict[str, Any]) -> str:
    files = "\n".join(files)
    return f"""# Debian package descriptions (raydr build-debian)

A retrieval collection built from Debian package descriptions: each query is a package's
one-line synopsis, the corpus holds the packages' long descriptions (titled with the package
name), and a query's only relevant document is its own package (grade 1, split `{SPLIT}`).

## Built from

{files}

## How

- {report["stanzas"]} stanzas with a description read, {report["packages"]} distinct packages (first stanza wins)
- {report["dropped_short"]} dropped: no synopsis, or a long description under \
{report["min_words"]} words
- {report["dropped_shared"]} dropped: synopsis or long description shared with another package
- {report["kept"]} usable; drawn with seed {report["seed"]}: {report["docs"]} documents, and \
{report["queries"]} queries among them
"""
