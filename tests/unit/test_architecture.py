"""The architecture as checks that can fail: import-linter contracts (layers, no cycles) and one
owning module per literal that names a file format or a protocol key."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``raydr`` package under ``root`` with ``root``'s contracts."""
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [*LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_import_contracts_hold() -> None:
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "6 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        # The engine reaching up into validation: what the training loop used to do.
        ("training/loop.py", "import raydr.validation.ledger", "never reaches up"),
        # A cycle inside one package: the checkpoint module importing the loop that uses it.
        ("training/checkpoint.py", "import raydr.training.loop", "no import cycles"),
        # One benchmark borrowing another's code: what the search bench did with stopping's.
        ("bench/asha.py", "import raydr.bench.stopping", "no benchmark imports another"),
        # The product reaching for test support.
        ("tuning/search.py", "import raydr.testing.fake_cluster", "never imports test support"),
    ],
)
def test_a_bad_import_breaks_the_contracts(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    shutil.copytree(
        REPO / "raydr", tmp_path / "raydr", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "raydr" / module
    target.write_text(target.read_text() + f"\n{bad_import}\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if " BROKEN" in line]
    assert any(contract in line for line in broken), done.stdout[-3000:]


# Each names a file or a key that one module owns; any other module must ask that one.
OWNED = {
    "ledger.jsonl": "validation/ledger.py",
    "validated_step": "validation/ledger.py",
    "subset.json": "validation/sampling.py",
    "checkpoint_step_": "training/checkpoint.py",
    "raydr.json": "training/checkpoint.py",
    "training_state.pt": "training/checkpoint.py",
}


@pytest.mark.parametrize("literal", sorted(OWNED))
def test_one_module_owns_each_literal(literal: str) -> None:
    package = REPO / "raydr"
    owners = sorted(
        str(p.relative_to(package)) for p in package.rglob("*.py") if literal in p.read_text()
    )
    assert owners == [OWNED[literal]]
