"""raydr on clusters, as far as one machine allows: `ray job submit` against a real `ray start`
head, and placement on simulated multi-node clusters (ray.cluster_utils)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_job

from raydr import config
from raydr.errors import RaydrError
from raydr.testing.fake_cluster import PORTS, answers, free_port

pytestmark = pytest.mark.ray


class _Head:
    """A `ray start --head --block` of this test's own: stopping it (SIGTERM to the process that
    started it) ends only its processes, never another Ray on the machine (no `ray stop`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port, self.dash = free_port(), free_port()
        # A short temp dir of its own: Unix socket paths must stay under ~107 characters.
        self.temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        ray = Path(sys.executable).parent / "ray"
        self.proc = subprocess.Popen(
            [
                str(ray),
                "start",
                "--head",
                "--block",
                f"--port={self.port}",
                f"--dashboard-port={self.dash}",
                "--dashboard-host=127.0.0.1",
                f"--temp-dir={self.temp}",
                # Every port its own, so two heads can run side by side (defaults collide).
                *(f"--{name}={free_port()}" for name in PORTS),
                "--num-cpus=2",
                "--num-gpus=1",
                f"--object-store-memory={150 * 1024**2}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while not self.answers():
            assert self.proc.poll() is None and time.time() < deadline, "the head did not start"
            time.sleep(0.5)

    def answers(self) -> bool:
        """The head's GCS and dashboard accept connections."""
        return answers(self.port, self.dash)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def test_ray_job_submit_to_a_local_head(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    job = tmp_path / "work" / "job.yaml"
    job.parent.mkdir()
    tree = tiny_job("tiny-job", tmp_path, tiny_dataset, tiny_model_dir, negatives)
    job.write_text(yaml.safe_dump(tree))
    # Ray 2.60 turns token auth on by default; the head and the jobs CLI must agree.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    bystander = _Head(env)  # somebody else's Ray on the same machine: it must survive this test
    try:
        head = _Head(env)
        try:
            entry = f"{sys.executable} -m raydr.cli train job.yaml --no-eval -q"
            submit = [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{head.dash}",
                "--working-dir",
                str(job.parent),
                "--",
                *entry.split(),
            ]
            deadline = time.time() + 120
            while True:
                done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
                # A blocking head answers before its job agent is up; the CLI says so at once.
                if "No available agent" not in done.stderr or time.time() > deadline:
                    break
                time.sleep(2)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert "succeeded" in done.stdout.lower()
        finally:
            head.stop()
        assert not head.answers(), "our head is still up after stopping it"
        assert bystander.proc.poll() is None and bystander.answers(), "another Ray was stopped"
    finally:
        bystander.stop()
    from raydr.training import checkpoint
    from raydr.validation.ledger import Ledger

    folders = (tmp_path / "storage" / "tiny-job").iterdir()
    assert sorted(checkpoint.read(p).step for p in folders if checkpoint.is_raydr(p)) == [1, 2]
    ledger = Ledger.find(tmp_path / "runs" / "tiny-job")
    assert [r["step"] for r in ledger.results()] == [1, 2]


def test_unreachable_address_and_unknown_storage_scheme(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from raydr.connect import init_ray
    from raydr.training.preflight import check_storage

    storage = {"storage_path": "ftp2://bucket/x"}
    tree = tiny_job("tiny-job", tmp_path, tiny_dataset, tiny_model_dir, negatives, training=storage)
    with pytest.raises(
        RaydrError, match=r"training\.storage_path 'ftp2://bucket/x': unknown URI scheme 'ftp2'"
    ):
        check_storage(config.build(tree, "t"))
    tree["training"]["storage_path"] = str(tmp_path)
    tree["ray"] = {"address": f"127.0.0.1:{free_port()}"}
    env_before = os.environ.pop("RAY_ADDRESS", None)
    try:
        with pytest.raises(RaydrError, match=r"ray\.address='127\.0\.0\.1:\d+': cannot connect"):
            init_ray(config.build(tree, "t"))
    finally:
        if env_before is not None:
            os.environ["RAY_ADDRESS"] = env_before
