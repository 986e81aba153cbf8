"""Fetch a BEIR dataset by name from BEIR's public download location, cached and md5-checked.

``fetch_beir("scifact")`` downloads ``<base>/scifact.zip``, checks its md5 against the value
BEIR's README publishes, unzips it into the cache and returns ``<cache>/scifact/`` (the folder
holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``), ready for
``raydr.data.beir.import_beir``. A later call finds the completed extraction and returns it
without touching the network.

Every write is atomic: the zip streams into a ``*.part`` file and is unzipped into a temporary
folder, both inside the cache; only a fully verified and extracted folder is renamed into place,
and it carries a marker file with the md5 of its zip. A folder without that marker (a crash,
a half copy by hand) is never taken as complete. All failures raise ``RaydrError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from raydr.errors import RaydrError

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

# md5 of each public zip, as the table in BEIR's README (github.com/beir-cellar/beir) lists them.
# The non-public datasets (bioasq, signal1m, trec-news, robust04) have no zip there.
KNOWN: dict[str, str] = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}

MARKER = ".raydr-fetched"  # written last, inside the folder; holds the md5 of its zip
_CHUNK = 1 << 20
# The name becomes a path component and part of a URL: keep it to one plain component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MD5 = re.compile(r"[0-9a-f]{32}")


def default_cache() -> Path:
    """``$RAYDR_CACHE/beir``, else ``~/.cache/raydr/beir``."""
    root = os.environ.get("RAYDR_CACHE") or str(Path.home() / ".cache" / "raydr")
    return Path(root).expanduser() / "beir"


def fetch_beir(
    name: str,
    *,
    cache: Path | None = None,
    base_url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Return ``<cache>/<name>/``, the extracted BEIR folder, downloading it if needed.

    ``base_url``: else ``$RAYDR_BEIR_URL``, else ``BEIR_URL``; the zip is ``<base>/<name>.zip``.
    ``md5``: else ``KNOWN[name]``. ``timeout`` bounds the connection and each read, in seconds.
    ``progress`` shows a tqdm bar on stderr. Raises ``RaydrError``.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        raise RaydrError(f"BEIR dataset name {name!r}: expected a plain name such as 'scifact'")
    expected = _expected_md5(name, md5)
    cache = Path(cache).expanduser() if cache is not None else default_cache()
    target = cache / name
    if _is_complete(target, expected):
        log.info("%s: cached in %s", name, target)
        return target

    base = base_url or os.environ.get("RAYDR_BEIR_URL") or BEIR_URL
    url = f"{base.rstrip('/')}/{name}.zip"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RaydrError(f"{cache}: cannot create the BEIR cache ({err})") from err

    part = _download(url, cache, name, expected, timeout, progress)
    try:
        _extract(part, url, name, target, expected)
    finally:
        part.unlink(missing_ok=True)  # the extracted folder is what the cache keeps
    return target


def _expected_md5(name: str, md5: str | None) -> str:
    if md5 is None:
        if name not in KNOWN:
            raise RaydrError(
                f"unknown BEIR dataset {name!r} (known: {', '.join(sorted(KNOWN))}); pass its "
                f"md5 to fetch it anyway, or download and unzip it yourself and run "
                f"`raydr import-beir <folder> OUT` on the folder"
            )
        return KNOWN[name]
    md5 = md5.strip().lower()
    if not _MD5.fullmatch(md5):
        raise RaydrError(f"md5 {md5!r}: expected 32 hexadecimal digits")
    return md5


def _is_complete(target: Path, expected: str) -> bool:
    # A marker for another md5 means the caller asked for a different zip: fetch that one.
    try:
        return (target / MARKER).read_text(encoding="utf-8").strip() == expected
    except OSError:
        return False


def _manual_route(url: str) -> str:
    return f"download {url} yourself, unzip it, and run `raydr import-beir <folder> OUT`"


def _download(
    url: str, cache: Path, name: str, expected: str, timeout: float, progress: bool
) -> Path:
    """Stream ``url`` into a ``*.part`` file in ``cache``; return it once its md5 matches."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".zip.part", dir=cache)
    except OSError as err:
        raise RaydrError(f"{cache}: cannot write the download there ({err})") from err
    part = Path(tmp)
    # usedforsecurity=False: md5 is an integrity check here, and FIPS builds refuse it otherwise.
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "raydr"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    size = response.headers.get("Content-Length")
                    with tqdm(
                        total=int(size) if size and size.isdigit() else None,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f"{name}.zip",
                        disable=not progress,
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            digest.update(chunk)
                            _write(out, chunk, part)
                            bar.update(len(chunk))
            # HTTPError is a URLError; read it first to report the status code.
            except urllib.error.HTTPError as err:
                raise _unreachable(url, f"HTTP {err.code} {err.reason}") from err
            except urllib.error.URLError as err:
                raise _unreachable(url, str(err.reason)) from err
            except TimeoutError as err:  # a read timeout is not wrapped in URLError
                raise _unreachable(url, f"no answer within {timeout:g} s") from err
            except (http.client.HTTPException, OSError) as err:  # connection cut mid-way
                raise _unreachable(url, f"{type(err).__name__}: {err}") from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != expected:
        part.unlink(missing_ok=True)
        raise RaydrError(
            f"{url}: checksum mismatch (expected md5 {expected}, got {actual}); the download "
            f"was deleted. Retry, or if the file changed upstream pass its new md5"
        )
    return part


def _write(out: BinaryIO, chunk: bytes, part: Path) -> None:
    # A disk error must not be reported as a network error with a "download it yourself" hint.
    try:
        out.write(chunk)
    except OSError as err:
        raise RaydrError(f"{part}: cannot write the download ({err})") from err


def _unreachable(url: str, reason: str) -> RaydrError:
    return RaydrError(
        f"cannot download {url}: {reason}. If this machine is offline or the site is "
        f"blocked, {_manual_route(url)}"
    )


def _extract(zip_path: Path, url: str, name: str, target: Path, md5: str) -> None:
    """Unzip into a temp folder next to ``target``, mark it complete, then rename it in place."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise RaydrError(f"{target.parent}: cannot extract {url} there ({err})") from err
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                # Check every member before writing any, so a bad zip writes nothing.
                for member in zf.namelist():
                    _check_member(member, staging, url)
                zf.extractall(staging)
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as err:
            raise RaydrError(f"{url}: not a readable zip file ({err})") from err
        folder = staging / name
        if not folder.is_dir():
            raise RaydrError(
                f"{url}: the zip holds no top folder {name}/ (a BEIR zip holds <name>/); "
                f"{_manual_route(url)}"
            )
        (folder / MARKER).write_text(md5 + "\n", encoding="utf-8")
        _replace_dir(folder, target)
    except OSError as err:
        raise RaydrError(f"{target}: cannot extract {url} there ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(member: str, root: Path, url: str) -> None:
    # zipfile would quietly rewrite such names; refuse them instead, since a zip that tries to
    # write outside its folder is not one BEIR published.
    path = PurePosixPath(member.replace("\\", "/"))
    escapes = (
        path.is_absolute()
        or re.match(r"[A-Za-z]:", member) is not None  # a Windows drive
        or ".." in path.parts
        or not (root / path).resolve().is_relative_to(root.resolve())
    )
    if escapes:
        raise RaydrError(f"{url}: zip member {member!r} points outside its folder; refused")


def _replace_dir(src: Path, target: Path) -> None:
    # rename(2) cannot replace a non-empty folder: move a stale one (no or another marker)
    # aside first and delete it only once the new one is in place.
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                old.unlink()
