"""raydr.data.debian on small control files written here: parsing, cleaning, the draw, the
BEIR folder it writes (read back by the project's importer) and its errors."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from raydr.cli import main
from raydr.data.beir import import_beir
from raydr.data.debian import (
    APT_UPDATE,
    Package,
    build_debian_collection,
    default_sources,
    read_packages,
)
from raydr.data.split import load_split
from raydr.errors import RaydrError

FILLER = "it reads input files and writes reports for the people who maintain them every day"


def stanza(name: str, synopsis: str, text: str, field: str = "Description-en") -> str:
    """One Translation-en stanza; ``text``'s blank lines become " ." paragraph breaks."""
    body = "".join(f" {line}\n" if line else " .\n" for line in text.split("\n"))
    return f"Package: {name}\nDescription-md5: 0123\n{field}: {synopsis}\n{body}\n"


def long_text(name: str, words: int = 40) -> str:
    """A description of ``words`` words that no other package's text equals."""
    filler = (FILLER.split() * 10)[: words - 3]
    return f"The {name} tool: " + " ".join(filler)


def translation(tmp_path: Path, count: int, name: str = "Translation-en", start: int = 0) -> Path:
    """A Translation-en file of ``count`` distinct packages pkg<start>…"""
    names = [f"pkg{i:03d}" for i in range(start, start + count)]
    path = tmp_path / name
    path.write_text("".join(stanza(n, f"synopsis of {n}", long_text(n)) for n in names))
    return path


def build(sources: list[Path], out: Path, **kw) -> dict:
    kw = {"num_docs": 20, "num_queries": 5, **kw}
    return build_debian_collection(sources, out, **kw)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parses_multiline_descriptions_and_paragraph_breaks(tmp_path: Path) -> None:
    path = tmp_path / "status"
    path.write_text(
        # A dpkg status stanza: other fields (one multi-line), Description without -en.
        "Package: alpha\nStatus: install ok installed\nDepends: libc6,\n libfoo\n"
        "Description: Alpha does things\n first line of alpha\n second line\n .\n"
        "  * verbatim item\n .\n last paragraph\nHomepage: https://example.org\n"
        "\n\n"
        "Package: nodesc\nStatus: deinstall ok config-files\n"
        "\n"
        "package: beta\nDESCRIPTION-EN:   Beta synopsis  \n only line\n"
    )
    assert list(read_packages(path)) == [
        Package(
            "alpha",
            "Alpha does things",
            "first line of alpha\nsecond line\n\n * verbatim item\n\nlast paragraph",
        ),
        # field names are case-insensitive; a stanza with no description is skipped
        Package("beta", "Beta synopsis", "only line"),
    ]


def test_shared_synopses_or_descriptions_drop_every_package_sharing(tmp_path: Path) -> None:
    shared = long_text("libshared")
    path = translation(tmp_path, 20)
    with path.open("a") as fh:
        fh.write(stanza("libshared1", "Shared library", shared))
        # The same text in other case and line breaks is still the same text.
        fh.write(
            stanza(
                "libshared-dev", "Shared library (dev files)", shared.upper().replace(" ", "\n", 3)
            )
        )
        fh.write(stanza("twin-a", "One synopsis for two", long_text("twin-a")))
        fh.write(stanza("twin-b", "one  synopsis for TWO", long_text("twin-b")))
    report = build([path], tmp_path / "out")
    assert (report["packages"], report["dropped_shared"], report["kept"]) == (24, 4, 20)
    ids = {row["_id"] for row in jsonl(tmp_path / "out" / "corpus.jsonl")}
    assert ids == {f"pkg{i:03d}" for i in range(20)}


def test_short_descriptions_and_empty_synopses_dropped(tmp_path: Path) -> None:
    path = translation(tmp_path, 20)
    with path.open("a") as fh:
        fh.write(stanza("short", "Too short", long_text("short", words=29)))
        fh.write(stanza("nosyn", "", long_text("nosyn")))
        fh.write(stanza("exact", "Just enough", long_text("exact", words=30)))
    report = build([path], tmp_path / "out", num_docs=21)
    assert (report["dropped_short"], report["kept"]) == (2, 21)
    ids = {row["_id"] for row in jsonl(tmp_path / "out" / "corpus.jsonl")}
    assert "exact" in ids and not {"short", "nosyn"} & ids


def test_first_stanza_of_a_name_wins(tmp_path: Path) -> None:
    newer = tmp_path / "security_Translation-en"
    newer.write_text(stanza("pkg000", "synopsis of pkg000, fixed", long_text("pkg000-new")))
    report = build([newer, translation(tmp_path, 20)], tmp_path / "out")
    assert (report["stanzas"], report["packages"]) == (21, 20)
    corpus = {row["_id"]: row["text"] for row in jsonl(tmp_path / "out" / "corpus.jsonl")}
    assert corpus["pkg000"] == long_text("pkg000-new")


def test_the_draw_follows_the_seed_not_the_file_order(tmp_path: Path) -> None:
    first, second = translation(tmp_path, 30, "a"), translation(tmp_path, 30, "b", start=30)
    files = ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"]

    def draw(name: str, sources: list[Path], seed: int) -> list[str]:
        build(sources, tmp_path / name, seed=seed)
        return [(tmp_path / name / f).read_text() for f in files]

    same = draw("s0", [first, second], 0)
    assert draw("s0-again", [second, first], 0) == same
    other = draw("s1", [first, second], 1)
    assert other[0] != same[0] and other[1] != same[1]


def _lz4(src: Path, dst: Path) -> None:
    if shutil.which("lz4") is None:
        pytest.skip("no lz4 program to write a test file with")
    subprocess.run(["lz4", "-q", "-f", str(src), str(dst)], check=True)


@pytest.mark.parametrize(
    "compress",
    [
        lambda src, dst: dst.write_bytes(gzip.compress(src.read_bytes())),
        lambda src, dst: dst.write_bytes(lzma.compress(src.read_bytes())),
        _lz4,
    ],
    ids=["gz", "xz", "lz4"],
)
def test_compressed_inputs_read_as_plain(tmp_path: Path, compress) -> None:
    plain = translation(tmp_path, 5)
    packed = tmp_path / "packed"  # no suffix: the format is told by the first bytes
    compress(plain, packed)
    assert packed.read_bytes() != plain.read_bytes()
    assert list(read_packages(packed)) == list(read_packages(plain))
    cut = tmp_path / "cut"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(RaydrError, match=f"{cut}: (line [0-9]+: cannot read|lz4 -d failed)"):
        list(read_packages(cut))


def test_output_imports_with_the_beir_importer(tmp_path: Path) -> None:
    source = translation(tmp_path, 40)
    synopsis = {p.name: p.synopsis for p in read_packages(source)}
    report = build([source], tmp_path / "raw", num_docs=30, num_queries=8)
    assert (report["docs"], report["queries"]) == (30, 8)
    assert "Debian package descriptions" in (tmp_path / "raw" / "SOURCE.md").read_text()

    imported = import_beir(tmp_path / "raw", tmp_path / "imported", strict=True)
    assert (imported["docs"], imported["queries"], imported["dropped_qrels"]) == (30, 8, 0)
    split = load_split(tmp_path / "imported", "test")
    assert len(split.query_ids) == 8 and len(split.doc_ids) == 30
    for qid, text in zip(split.query_ids, split.queries, strict=True):
        name = qid.removeprefix("q-")
        assert qid == f"q-{name}" and split.qrels[qid] == {name: 1}
        assert text == synopsis[name] and name in split.doc_ids


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    with pytest.raises(RaydrError, match=f"{empty}: no stanzas"):
        build([empty], tmp_path / "out")
    garbage = tmp_path / "garbage"
    garbage.write_text("Package: a\nthis is not a field\n")
    with pytest.raises(RaydrError, match=f"{garbage}: line 2: expected 'Field: value'"):
        build([garbage], tmp_path / "out")
    orphan = tmp_path / "orphan"
    orphan.write_text(" a continuation line first\n")
    with pytest.raises(RaydrError, match=f"{orphan}: line 1: continuation line with no field"):
        build([orphan], tmp_path / "out")
    nameless = tmp_path / "nameless"
    nameless.write_text(stanza("a", "A", long_text("a")) + "Description-en: B\n b\n")
    with pytest.raises(RaydrError, match=f"{nameless}: line 6: stanza has no 'Package'"):
        build([nameless], tmp_path / "out")
    few = translation(tmp_path, 10)
    with pytest.raises(RaydrError, match=f"{few}: 10 usable packages .* asks for 20"):
        build([few], tmp_path / "out")
    with pytest.raises(RaydrError, match="expected 1 <= queries <= docs"):
        build([few], tmp_path / "out", num_docs=3, num_queries=4)
    assert not (tmp_path / "out").exists()


def test_existing_output_refused_unless_overwrite(tmp_path: Path) -> None:
    source, out = translation(tmp_path, 20), tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    build([source], out)
    with pytest.raises(RaydrError, match="already exists"):
        build([source], out, seed=1)
    before = (out / "queries.jsonl").read_text()
    build([source], out, seed=1, overwrite=True)
    assert (out / "queries.jsonl").read_text() != before


def test_default_sources_are_apts_english_translations(tmp_path: Path) -> None:
    with pytest.raises(RaydrError, match=f"{tmp_path}: no .*; run `{APT_UPDATE}` first"):
        default_sources(tmp_path)
    for name in ["b_i18n_Translation-en.lz4", "a_i18n_Translation-en", "a_Packages.lz4"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in default_sources(tmp_path)] == [
        "a_i18n_Translation-en",
        "b_i18n_Translation-en.lz4",
    ]


def test_cli_builds_and_reports_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    source, out = translation(tmp_path, 20), tmp_path / "out"
    argv = ["build-debian", str(out), "--source", str(source), "--docs", "20", "--queries", "5"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["queries"] == 5
    assert main([*argv[:3], str(tmp_path / "missing"), *argv[4:], "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("raydr: error: ") and "missing" in err
