"""raydr.data.fetch against a real loopback HTTP server serving zips built here; no mocks."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from raydr.data.beir import import_beir
from raydr.data.fetch import BEIR_URL, KNOWN, MARKER, default_cache, fetch_beir
from raydr.errors import RaydrError

NAME = "tiny"
DOCS = [
    {"_id": "d1", "title": "Alpha", "text": "The first document."},
    {"_id": "d2", "title": "", "text": "The second document."},
    {"_id": "d3", "title": "Gamma", "text": "The third document."},
]
QUERIES = [{"_id": "q1", "text": "what is alpha?"}, {"_id": "q2", "text": "the second one"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\td3\t0\n"


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def make_zip(path: Path, *, top: str = NAME, extra: dict[str, str] | None = None) -> str:
    """Write a BEIR-style zip (``<top>/corpus.jsonl`` …) to ``path``; return its md5."""
    members = {
        f"{top}/corpus.jsonl": _jsonl(DOCS),
        f"{top}/queries.jsonl": _jsonl(QUERIES),
        f"{top}/qrels/test.tsv": QRELS,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in members.items():
            zf.writestr(member, text)
    return hashlib.md5(path.read_bytes()).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


class Server:
    """A loopback HTTP server on a free port, serving ``root`` from a background thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll interval: shutdown() waits for it, 0.5 s by default in every test.
        serve = functools.partial(self._httpd.serve_forever, poll_interval=0.02)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()  # frees the port: later connections are refused
            self._thread.join()
            self.running = False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "www")
    srv.root.mkdir(exist_ok=True)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never read or write the real ~/.cache, never fall back on a URL set in the environment.
    monkeypatch.setenv("RAYDR_CACHE", str(tmp_path / "raydr-cache"))
    monkeypatch.delenv("RAYDR_BEIR_URL", raising=False)


def _free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_cache_follows_raydr_cache(tmp_path: Path, monkeypatch) -> None:
    assert default_cache() == tmp_path / "raydr-cache" / "beir"
    monkeypatch.delenv("RAYDR_CACHE")
    assert default_cache() == Path.home() / ".cache" / "raydr" / "beir"


def test_fetch_extracts_and_then_serves_from_cache(server: Server, tmp_path: Path) -> None:
    md5 = make_zip(server.root / f"{NAME}.zip")
    cache = tmp_path / "cache"
    got = fetch_beir(NAME, cache=cache, base_url=server.url, md5=md5, progress=False)
    assert got == cache / NAME
    assert (got / "corpus.jsonl").read_text() == _jsonl(DOCS)
    assert (got / "queries.jsonl").read_text() == _jsonl(QUERIES)
    assert (got / "qrels" / "test.tsv").read_text() == QRELS
    assert (got / MARKER).read_text().strip() == md5
    assert sorted(p.name for p in cache.iterdir()) == [NAME]  # no .part or temp folder left

    server.stop()  # from here on any network access fails
    again = fetch_beir(NAME, cache=cache, base_url=server.url, md5=md5, progress=False)
    assert again == got and (again / "corpus.jsonl").is_file()


def test_url_and_cache_come_from_the_environment(server: Server, monkeypatch) -> None:
    md5 = make_zip(server.root / f"{NAME}.zip")
    monkeypatch.setenv("RAYDR_BEIR_URL", server.url + "/")  # a trailing slash is tolerated
    got = fetch_beir(NAME, md5=md5, progress=True)  # the progress bar path runs too
    assert got == default_cache() / NAME and (got / MARKER).is_file()


def test_wrong_md5_is_refused_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    md5 = make_zip(server.root / f"{NAME}.zip")
    wrong = "0" * 32
    cache = tmp_path / "cache"
    with pytest.raises(RaydrError) as err:
        fetch_beir(NAME, cache=cache, base_url=server.url, md5=wrong, progress=False)
    msg = str(err.value)
    assert wrong in msg and md5 in msg and f"{server.url}/{NAME}.zip" in msg
    assert list(cache.iterdir()) == []  # no partial download, no folder

    got = fetch_beir(NAME, cache=cache, base_url=server.url, md5=md5, progress=False)
    assert (got / "corpus.jsonl").is_file()


def test_folder_without_marker_is_not_taken_as_complete(server: Server, tmp_path: Path) -> None:
    # What an interrupted copy by hand, or a zip for another md5, leaves behind.
    md5 = make_zip(server.root / f"{NAME}.zip")
    stale = tmp_path / "cache" / NAME
    (stale / "qrels").mkdir(parents=True)
    (stale / "corpus.jsonl").write_text("half a line")
    got = fetch_beir(NAME, cache=stale.parent, base_url=server.url, md5=md5, progress=False)
    assert (got / "corpus.jsonl").read_text() == _jsonl(DOCS)
    assert (got / MARKER).read_text().strip() == md5
    assert sorted(p.name for p in stale.parent.iterdir()) == [NAME]  # the stale copy is gone

    (got / MARKER).write_text("f" * 32)  # marked for another zip: fetched again
    fetch_beir(NAME, cache=stale.parent, base_url=server.url, md5=md5, progress=False)
    assert (got / MARKER).read_text().strip() == md5


def test_unreachable_server_names_url_and_manual_route(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_free_closed_port()}"
    cache = tmp_path / "cache"
    with pytest.raises(RaydrError) as err:
        fetch_beir("scifact", cache=cache, base_url=base, progress=False)
    msg = str(err.value)
    assert f"{base}/scifact.zip" in msg and "refused" in msg.lower()
    assert "raydr import-beir <folder> OUT" in msg and "yourself" in msg
    assert list(cache.iterdir()) == []


def test_silent_server_times_out(tmp_path: Path) -> None:
    # The kernel completes the TCP handshake for a listening socket nobody accepts from, so the
    # connection succeeds and the response never comes: the read timeout path.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(RaydrError) as err:
            fetch_beir("scifact", cache=tmp_path, base_url=base, timeout=0.3, progress=False)
    msg = str(err.value)
    assert f"{base}/scifact.zip" in msg and "no answer within 0.3 s" in msg and "import-beir" in msg
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_a_raydr_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(RaydrError) as err:
        fetch_beir("scifact", cache=tmp_path / "cache", base_url=server.url, progress=False)
    msg = str(err.value)
    assert "404" in msg and f"{server.url}/scifact.zip" in msg and "import-beir" in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_name_without_md5_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(RaydrError) as err:
        fetch_beir("no-such-set", cache=tmp_path, base_url="http://127.0.0.1:9", progress=False)
    msg = str(err.value)
    assert "no-such-set" in msg and "scifact" in msg and "nfcorpus" in msg
    assert "import-beir" in msg
    assert list(tmp_path.iterdir()) == []  # refused before any download


def test_known_table_and_default_url() -> None:
    assert KNOWN["scifact"] == "5f7d1de60b170fc8027bb7898e2efca1"
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in KNOWN.values())
    assert BEIR_URL == "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
def test_name_must_be_one_plain_component(bad: str, tmp_path: Path) -> None:
    with pytest.raises(RaydrError, match="plain name"):
        fetch_beir(bad, cache=tmp_path, md5="0" * 32, progress=False)


def test_malformed_md5_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RaydrError, match="32 hexadecimal"):
        fetch_beir(NAME, cache=tmp_path, md5="abc", progress=False)


@pytest.mark.parametrize("member", ["../evil", f"{NAME}/../../evil", "ABSOLUTE"])
def test_zip_member_escaping_the_folder_is_refused(
    member: str, server: Server, tmp_path: Path
) -> None:
    outside = tmp_path / "evil"  # where ../evil would land from the cache's temp folder
    cache = tmp_path / "box" / "cache"
    if member == "ABSOLUTE":
        member = str(tmp_path / "evil")
    md5 = make_zip(server.root / f"{NAME}.zip", extra={member: "pwned"})
    with pytest.raises(RaydrError) as err:
        fetch_beir(NAME, cache=cache, base_url=server.url, md5=md5, progress=False)
    assert member in str(err.value) and "refused" in str(err.value)
    assert list(cache.iterdir()) == []  # nothing extracted, nothing kept
    assert not outside.exists()
    assert not (tmp_path / "box" / "evil").exists()


def test_zip_without_the_top_folder_is_refused(server: Server, tmp_path: Path) -> None:
    md5 = make_zip(server.root / f"{NAME}.zip", top="other")
    cache = tmp_path / "cache"
    with pytest.raises(RaydrError, match=f"no top folder {NAME}/"):
        fetch_beir(NAME, cache=cache, base_url=server.url, md5=md5, progress=False)
    assert list(cache.iterdir()) == []


def test_not_a_zip_is_refused(server: Server, tmp_path: Path) -> None:
    body = b"<html>a captive portal page</html>"
    (server.root / f"{NAME}.zip").write_bytes(body)
    cache = tmp_path / "cache"
    with pytest.raises(RaydrError, match="not a readable zip"):
        fetch_beir(
            NAME,
            cache=cache,
            base_url=server.url,
            md5=hashlib.md5(body).hexdigest(),
            progress=False,
        )
    assert list(cache.iterdir()) == []


def test_fetched_folder_imports_end_to_end(server: Server, tmp_path: Path) -> None:
    md5 = make_zip(server.root / f"{NAME}.zip")
    folder = fetch_beir(NAME, base_url=server.url, md5=md5, progress=False)
    report = import_beir(folder, tmp_path / "out")
    assert report["docs"] == len(DOCS) and report["queries"] == len(QUERIES)
    assert report["splits"]["test"]["rows"] == 3 and report["dropped_qrels"] == 0
    assert (tmp_path / "out" / "qrels" / "test.parquet").is_file()


def test_import_beir_takes_a_dataset_name_on_the_command_line(
    server: Server, tmp_path: Path, monkeypatch, capsys
) -> None:
    from raydr.cli import main

    md5 = make_zip(server.root / f"{NAME}.zip")
    monkeypatch.setenv("RAYDR_BEIR_URL", server.url)
    out = tmp_path / "imported"
    assert main(["import-beir", NAME, str(out), "--md5", md5, "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["docs"] == len(DOCS)
    assert (out / "corpus.parquet").is_file()
    server.stop()  # offline now: the name is served from the cache
    assert main(["import-beir", NAME, str(out), "--md5", md5, "-q", "--overwrite"]) == 0
    capsys.readouterr()
    # Offline and not cached: one line naming the URL and the manual route.
    assert main(["import-beir", "scifact", str(tmp_path / "sf"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("raydr: error: cannot download")
    assert f"{server.url}/scifact.zip" in err and "raydr import-beir <folder> OUT" in err


def test_an_upper_case_md5_is_accepted_and_kept_in_lower_case(
    server: Server, tmp_path: Path
) -> None:
    """Pins md5 normalisation: md5 tools and web pages print it in either case (and with a
    trailing newline when pasted); the same digest must fetch, mark the folder in lower case, and
    find it cached again, not be refused as malformed or checked case-sensitively."""
    md5 = make_zip(server.root / f"{NAME}.zip")
    cache = tmp_path / "cache"
    got = fetch_beir(NAME, cache=cache, base_url=server.url, md5=md5.upper(), progress=False)
    assert (got / "corpus.jsonl").read_text() == _jsonl(DOCS)
    assert (got / MARKER).read_text().strip() == md5
    server.stop()  # offline: served from the cache whatever the case
    again = fetch_beir(
        NAME, cache=cache, base_url=server.url, md5=f" {md5.upper()}\n", progress=False
    )
    assert again == got
