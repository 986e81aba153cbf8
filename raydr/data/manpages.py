"""A retrieval collection built offline from manual pages (roff), in BEIR format.

Each page is a query/document pair: the query is the one-line summary of its NAME section
(``open, openat, creat \\- open and possibly create a file`` → "open and possibly create a
file"), the document its DESCRIPTION section as plain text (titled with the names it
documents, first ``max_words`` words), and the query's only relevant document is its own page.
It is a third domain next to SciFact and Debian descriptions: system and library reference
prose. Cleaning, the draw and the output are ``raydr.data.pairs``'s.

Input: folders searched for pages (``man<section>/<name>.<section>[.gz|.xz|.bz2]``). Debian's
``manpages`` and ``manpages-dev`` packages hold the Linux man-pages project's sections 2–7;
without a network to fetch them from, any extracted package works:
``apt-get download manpages manpages-dev && dpkg-deb -x manpages_*.deb x && dpkg-deb -x
manpages-dev_*.deb x``, then ``--source x/usr/share/man``.

There is no maintained roff parser on PyPI, and ``groff``/``mandoc`` are not on every machine,
so ``to_text`` reads the small part of the ``man`` macro package these pages use: section
headers, font macros and escapes become text; layout macros, tables and comments go. Pages
that only include another (``.so``) or link to it are aliases and are skipped.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raydr.data.pairs import SPLIT, Pair, check_sizes, write_collection
from raydr.errors import RaydrError

_PAGE = re.compile(r"^(?P<name>.+)\.(?P<section>\d[a-z0-9]*)(?:\.(?:gz|xz|bz2))?$")
# Font macros: their arguments are text (alternating ones join theirs without spaces).
_FONTS = {"B", "I", "SM", "SB"}
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_ESCAPES = {
    "-": "-", "e": "\\", "&": "", " ": " ", "~": " ", "|": "", "^": "", "%": "", "c": "",
    ":": "", "(em": "—", "(en": "–", "(lq": '"', "(rq": '"', "(oq": "'", "(cq": "'",
    "(aq": "'", "(dq": '"', "(bu": "•", "(co": "©", "(ti": "~", "(ha": "^", "(mu": "×",
    "(>=": "≥", "(<=": "≤", "(ga": "`", "(rs": "\\", "*(lq": '"', "*(rq": '"',
}  # fmt: skip
# One escape: \(xx, \[name], \*(xx, \*[name], \*x, \fX, \f(XX, \f[X], \sN, or one character.
_ESCAPE = re.compile(
    r"\\(\(..|\[[^\]]*\]|\*\(..|\*\[[^\]]*\]|\*.|f\(..|f\[[^\]]*\]|f.|s[+-]?\d+|.)"
)


def default_source() -> Path:
    return Path("/usr/share/man")


def build_manpages_collection(
    sources: list[Path],
    out: Path | str,
    *,
    num_queries: int = 300,
    num_docs: int = 800,
    seed: int = 0,
    min_words: int = 30,
    max_words: int = 300,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a BEIR folder of ``num_docs`` pages and ``num_queries`` NAME summaries among them
    (see the module's docstring). → the report; ``RaydrError`` on bad input."""
    check_sizes(num_queries, num_docs, min_words)
    if max_words < max(1, min_words):
        raise RaydrError(f"--max-words {max_words}: expected at least --min-words ({min_words})")
    files = sorted({p for source in sources for p in _pages(Path(source))})
    if not files:
        raise RaydrError(
            f"{', '.join(str(s) for s in sources)}: no manual pages (man<N>/NAME.N[.gz]); "
            f"extract Debian's manpages packages and pass --source DIR (see --help)"
        )
    pairs, aliases = [], 0
    for path in files:
        page = read_page(path)
        if page is None:
            aliases += 1
            continue
        names, summary, text = page
        words = text.split()
        pairs.append(Pair(_doc_id(path), summary, names, " ".join(words[:max_words])))
    return write_collection(
        pairs,
        out,
        counts={"files": len(files), "aliases": aliases, "pages": len(pairs)},
        what="pages",
        sources=[Path(s) for s in sources],
        num_queries=num_queries,
        num_docs=num_docs,
        seed=seed,
        min_words=min_words,
        overwrite=overwrite,
        source_md=lambda listed, report: _source_md(report, max_words),
    )


def _pages(source: Path) -> Iterator[Path]:
    if not source.is_dir():
        raise RaydrError(f"{source}: expected a folder of manual pages (e.g. /usr/share/man)")
    for path in source.rglob("*"):
        # A symlink is an alias of another page (Debian links creat.2.gz to open.2.gz).
        page = path.parent.name.startswith("man") and _PAGE.match(path.name)
        if page and path.is_file() and not path.is_symlink():
            yield path


def _doc_id(path: Path) -> str:
    match = _PAGE.match(path.name)
    assert match is not None
    return f"{match['name']}.{match['section']}"


def read_page(path: Path) -> tuple[str, str, str] | None:
    """A page → (the names it documents, its NAME summary, its DESCRIPTION as text); None for
    an alias (``.so``) or a page without both sections. ``RaydrError`` names an unreadable
    file."""
    try:
        raw = _open(path)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise RaydrError(f"{path}: cannot read the page ({exc})") from None
    sections = to_text(raw.decode("utf-8", errors="replace"))
    if sections is None or "NAME" not in sections or "DESCRIPTION" not in sections:
        return None
    names, dash, summary = sections["NAME"].partition(" - ")
    if not dash:
        return None
    return names.strip(), " ".join(summary.split()), sections["DESCRIPTION"]


def _open(path: Path) -> bytes:
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as fh:
        return fh.read()


def to_text(roff: str) -> dict[str, str] | None:
    """A man page's roff source → ``{SECTION: plain text}``, paragraphs joined by blank lines;
    None when the page only includes another (``.so``)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_table = False
    lines = roff.replace("\\\n", "").splitlines()  # an escaped newline continues the line
    for line in lines:
        if line.startswith((".", "'")):
            macro, _, args = line[1:].strip().partition(" ")
            if macro == "so":
                return None
            if macro in {"TS", "TE"}:
                in_table = macro == "TS"
                continue
            if in_table or macro.startswith('\\"'):
                continue
            if macro in {"SH", "SS"}:
                title = _text(" ".join(_arguments(args)))
                if macro == "SH":
                    current = sections.setdefault(title.upper(), [])
                elif current is not None:
                    current += ["", title]
                continue
            if current is None:
                continue
            if macro in _FONTS or macro in _ALTERNATING:
                glue = "" if macro in _ALTERNATING else " "
                current.append(_text(glue.join(_arguments(args))))
            elif macro == "IP" and args:
                current += ["", _text(_arguments(args)[0])]
            elif macro in {"PP", "P", "LP", "TP", "IP", "sp"}:
                current.append("")  # a paragraph break; other layout macros are dropped
        elif current is not None and not in_table:
            current.append(_text(line))
    return {name: _join(body) for name, body in sections.items()}


def _arguments(args: str) -> list[str]:
    """roff's macro arguments: split on spaces, double quotes group (``""`` is a quote)."""
    out, word, quoted, i = [], "", False, 0
    while i < len(args):
        c = args[i]
        if c == '"':
            if quoted and args[i + 1 : i + 2] == '"':
                word, i = word + '"', i + 2
                continue
            quoted = not quoted
        elif c == " " and not quoted:
            if word:
                out.append(word)
            word = ""
        else:
            word += c
        i += 1
    return [*out, word] if word else out


def _text(line: str) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m[1], ""), line)


def _join(lines: list[str]) -> str:
    paragraphs, words = [], []
    for line in [*lines, ""]:
        if line.strip():
            words.append(line.strip())
        elif words:
            paragraphs.append(" ".join(words))
            words = []
    return "\n\n".join(paragraphs)


def _source_md(report: dict[str, Any], max_words: int) -> str:
    return f"""# Manual pages (raydr build-manpages)

A retrieval collection built from manual pages: each query is a page's NAME summary, the
corpus holds the pages' DESCRIPTION sections as text (first {max_words} words, titled with the
names each page documents), and a query's only relevant document is its own page (grade 1,
split `{SPLIT}`).

## Built from

{chr(10).join(f"- `{s}`" for s in report["sources"])}: {report["files"]} page files,
{report["aliases"]} of them aliases (`.so`) or without NAME and DESCRIPTION.

## How

- {report["dropped_short"]} dropped: a DESCRIPTION under {report["min_words"]} words
- {report["dropped_shared"]} dropped: summary or description shared with another page
- {report["kept"]} usable; drawn with seed {report["seed"]}: {report["docs"]} documents, and \
{report["queries"]} queries among them
"""
