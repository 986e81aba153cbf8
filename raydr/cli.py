"""``raydr <verb> …``: the command line. Bad input ends in one line on stderr and exit status 2.

This module only parses and dispatches: the verbs are declared (``VERBS``) by the modules of
``raydr.commands`` and, under ``raydr bench``, of ``raydr.bench``, and found by walking them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from raydr.errors import RaydrError
from raydr.verb import Verb


class _UsageError(Exception):
    """A bad command line, raised instead of argparse's usage dump and exit."""


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block before its error; raise instead, so a bad command
    line ends like every other user error: one line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    import raydr.bench
    import raydr.commands

    parser = _Parser(prog="raydr", description=__doc__.split("\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add(verbs, declared(raydr.commands))  # in the order of the workflow
    bench = verbs.add_parser("bench", help="benchmarks that write JSON (+ PNG)")
    _add(
        bench.add_subparsers(dest="bench", required=True, metavar="BENCH"),
        sorted(declared(raydr.bench), key=lambda verb: verb.name),
    )
    return parser


def declared(package: ModuleType) -> list[Verb]:
    """Every ``Verb`` the modules of ``package`` declare in ``VERBS``, module by module in name
    order (a module without ``VERBS`` is support code, e.g. ``raydr.bench.measure``)."""
    found: list[Verb] = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.extend(getattr(module, "VERBS", ()))
    return found


def _add(subparsers: argparse._SubParsersAction, verbs: list[Verb]) -> None:
    for verb in verbs:
        p = subparsers.add_parser(verb.name, help=verb.help)
        verb.add_arguments(p)
        p.set_defaults(func=verb.run)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except _UsageError as err:
        print(f"raydr: error: {err}", file=sys.stderr)
        return 2
    return _run(args)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # argparse cannot take positional overrides after an option (`CONFIG -q k=v`), so collect
    # leftover key=value words by hand; anything else is still an error.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if w.startswith("-") or "=" not in w]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "checkpoints", None):
        # `validate CONFIG CKPT … key=value`: the checkpoint list takes every word, so hand the
        # key=value ones (that are not folders) back to the overrides.
        words = args.checkpoints
        args.checkpoints = [w for w in words if "=" not in str(w) or w.exists()]
        args.overrides = [*args.overrides, *(str(w) for w in words if w not in args.checkpoints)]
    return args


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("bm25s", "faiss", "httpx"):  # libraries that log at DEBUG on import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except RaydrError as err:
        _stop_ray()
        # Messages are meant to be one line; keep it so even when a library's text is not.
        print(f"raydr: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raydr: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: keep the traceback, but in a file
        if args.verbose:
            raise
        _stop_ray()
        return _crash(exc)
    return 0


def _stop_ray() -> None:
    """Disconnect first, so Ray's forwarded worker logs end before our error line is printed:
    the line that says what went wrong stays the last thing on the terminal."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _crash(exc: Exception) -> int:
    """One line naming the error and a file holding its traceback; exit status 1 (a bug)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    with tempfile.NamedTemporaryFile(
        "w", prefix="raydr-crash-", suffix=".log", delete=False
    ) as log_file:
        log_file.write(text)
    what = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    print(
        f"raydr: error: unexpected {what} (a bug: traceback in {log_file.name}; -v prints it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
