"""raydr.data.manpages on small man trees written here: roff to text, aliases, cleaning, the
collection read back by the project's importer, and its errors."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from raydr.cli import main
from raydr.data.beir import import_beir
from raydr.data.manpages import build_manpages_collection, read_page, to_text
from raydr.data.split import load_split
from raydr.errors import RaydrError

FILLER = (
    "the call returns a descriptor that later calls use to read or write the file, and it "
    "fails with an error number when the path cannot be resolved by the kernel"
)

OPEN = r""".\" Copyright and licence lines: comments, never text
.TH open 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
open, openat, creat \- open and possibly create a file
.SH SYNOPSIS
.nf
.B #include <fcntl.h>
.fi
.SH DESCRIPTION
The
.BR open ()
system call opens the file specified by
.IR pathname .
If it does not exist, it may be created (if \fBO_CREAT\fP is specified in
.IR flags ).
.PP
.TS
allbox;
l l.
O_RDONLY	read only
.TE
The argument \fIflags\fR must include one of \(lqO_RDONLY\(rq and \
O_WRONLY.
.SS "Open file descriptions"
.IP "\fBO_APPEND\fP" 4
The file is opened in append mode\-always.
.SH "SEE ALSO"
.BR close (2)
"""


def test_roff_becomes_the_text_a_reader_sees() -> None:
    sections = to_text(OPEN)
    assert sections is not None and set(sections) == {"NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"}
    assert sections["NAME"] == "open, openat, creat - open and possibly create a file"
    paragraphs = sections["DESCRIPTION"].split("\n\n")
    assert paragraphs[0] == (
        "The open() system call opens the file specified by pathname. If it does not exist, it "
        "may be created (if O_CREAT is specified in flags)."
    )
    # The table is gone; the escaped newline joined its line; the subsection is a paragraph
    # of its own, and a tagged paragraph opens with its tag.
    assert paragraphs[1] == 'The argument flags must include one of "O_RDONLY" and O_WRONLY.'
    assert paragraphs[2:] == [
        "Open file descriptions",
        "O_APPEND The file is opened in append mode-always.",
    ]
    assert "Copyright" not in str(sections) and "allbox" not in str(sections)
    assert to_text(".so man2/open.2\n") is None  # an alias


def _page(root: Path, section: str, name: str, summary: str, text: str) -> Path:
    folder = root / f"man{section}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{section}.gz"
    roff = f".TH {name} {section}\n.SH NAME\n{name} \\- {summary}\n.SH DESCRIPTION\n{text}\n"
    path.write_bytes(gzip.compress(roff.encode()))
    return path


def _tree(root: Path, pages: int = 12) -> Path:
    for i in range(pages):
        _page(root, "3", f"call{i}", f"do thing number {i}", f"call{i} is special. {FILLER}")
    return root


def test_a_collection_of_pages_imports_and_aliases_and_shared_pages_are_left_out(
    tmp_path: Path,
) -> None:
    man = _tree(tmp_path / "man")
    original = _page(man, "2", "open", "open a file", f"open. {FILLER}")
    os.symlink(original.name, man / "man2" / "creat.2.gz")  # Debian's alias: a symlink
    (man / "man2" / "openat.2").write_text(".so man2/open.2\n")  # roff's alias: an include
    _page(man, "2", "short", "too short", "a few words only")
    _page(man, "7", "twin1", "same summary", f"one. {FILLER}")
    _page(man, "7", "twin2", "same summary", f"two. {FILLER}")
    report = build_manpages_collection([man], tmp_path / "raw", num_queries=5, num_docs=13)
    assert (report["files"], report["aliases"], report["pages"]) == (17, 1, 16)
    assert (report["dropped_short"], report["dropped_shared"], report["kept"]) == (1, 2, 13)
    imported = import_beir(tmp_path / "raw", tmp_path / "imported", strict=True)
    assert (imported["docs"], imported["queries"]) == (13, 5)
    split = load_split(tmp_path / "imported", "test")
    for qid, rels in split.qrels.items():  # each query's only relevant doc is its own page
        assert list(rels) == [qid.removeprefix("q-")]
    docs = {
        json.loads(line)["_id"]: json.loads(line)
        for line in (tmp_path / "raw" / "corpus.jsonl").read_text().splitlines()
    }
    assert docs["open.2"]["title"] == "open" and docs["open.2"]["text"].startswith("open. the call")
    assert "creat.2" not in docs and "twin1.7" not in docs


def test_max_words_caps_a_document_and_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    man = _tree(tmp_path / "man")
    build_manpages_collection([man], tmp_path / "raw", num_queries=2, num_docs=12, max_words=30)
    texts = [
        json.loads(line)["text"]
        for line in (tmp_path / "raw" / "corpus.jsonl").read_text().splitlines()
    ]
    assert max(len(t.split()) for t in texts) == 30
    with pytest.raises(RaydrError, match=r"12 usable pages .* asks for 20"):
        build_manpages_collection([man], tmp_path / "more", num_queries=2, num_docs=20)
    broken = man / "man3" / "broken.3.gz"
    broken.write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(RaydrError, match=f"{broken}: cannot read the page"):
        read_page(broken)
    broken.unlink()
    assert main(["build-manpages", str(tmp_path / "x"), "--source", str(tmp_path / "none")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("raydr: error:") and "none" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["build-manpages", str(tmp_path / "x"), "--source", str(empty)]) == 2
    assert "no manual pages" in capsys.readouterr().err
