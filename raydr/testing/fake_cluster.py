"""A local cluster run by Ray's own autoscaler (v2) with its fake node provider.

Ray ships `ray.cluster_utils.AutoscalingCluster` for this, but in Ray 2.60's wheel it cannot be
built (it reads `fake_multi_node/example.yaml`, which the wheel does not install; so does the
monitor for `provider.type: fake_multinode`), and its
`start()`/`shutdown()` run `ray stop --force`, which would kill every other Ray on the machine.
This is the same thing without either problem: a `ray start --head --block` of its own (own
ports, own temp dir, own process group) whose monitor runs the real autoscaler over node types
given here. Worker nodes are real raylets started by the fake provider inside the monitor's
process group, so stopping the head stops them too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_MIB = 1024**2
# The fake provider's id for the head; v2 needs the head's node id to match it.
_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
# Every port a head opens, each set to a free one: two heads on one machine must not collide.
PORTS = (
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(*ports: int) -> bool:
    """Something on this machine accepts connections on every one of ``ports``."""
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
    return True


def node_type(
    resources: dict[str, float], *, max_workers: int, min_workers: int = 0, store_mib: int = 80
) -> dict[str, Any]:
    """One autoscaler node type. The object store is always capped: left out, every fake node
    would claim 30 % of this machine's memory."""
    return {
        "resources": {**resources, "object_store_memory": store_mib * _MIB},
        "node_config": {},
        "min_workers": min_workers,
        "max_workers": max_workers,
    }


class FakeAutoscalingCluster:
    """`ray start --head` with autoscaler v2 over `worker_types` (see `node_type`).

    `env` is added to the head's environment, which every node's workers inherit (e.g. a
    PYTHONPATH for functions defined in a test module).
    `head_cpus` are the head's CPUs (drivers, Tune's trial actors and the validation pool's
    coordinator live there); the head carries no custom resource, as on `cluster/aws.yaml`.
    """

    def __init__(
        self,
        worker_types: dict[str, dict[str, Any]],
        *,
        head_cpus: float = 2,
        idle_timeout_s: float = 3.0,
        upscaling_speed: float = 10.0,
        max_workers: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.worker_types = worker_types
        self.extra_env = env or {}
        self.head_cpus = head_cpus
        self.idle_timeout_s = idle_timeout_s
        self.port = free_port()
        self.dashboard_port = free_port()
        from ray.util import get_node_ip_address

        # The head's own address, as every node and Ray's address discovery will see it: with
        # 127.0.0.1 here, processes would name two GCS addresses and Ray's State API (which
        # Train's placement-group cleaner uses) refuses "multiple active Ray instances".
        self.address = f"{get_node_ip_address()}:{self.port}"
        # Short: Unix socket paths under the temp dir must stay below ~107 characters.
        self.temp = tempfile.mkdtemp(prefix="rfa", dir="/tmp")
        self.config = {
            "cluster_name": "raydr-fake",
            "max_workers": max_workers or sum(t["max_workers"] for t in worker_types.values()),
            "upscaling_speed": upscaling_speed,
            "idle_timeout_minutes": idle_timeout_s / 60,
            "provider": {
                # Ray's own fake provider, loaded as an "external" one: the wheel lacks the
                # defaults file that `type: fake_multinode` reads before anything starts.
                "type": "external",
                "module": "ray.autoscaler._private.fake_multi_node.node_provider."
                "FakeMultiNodeProvider",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                "gcs_address": self.address,
                "launch_multiple": True,
                "head_node_id": _HEAD_ID,
            },
            "head_node_type": "ray.head.default",
            "available_node_types": {
                **worker_types,
                "ray.head.default": {
                    "resources": {"CPU": head_cpus},
                    "node_config": {},
                    "max_workers": 0,
                },
            },
            "auth": {},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            **{
                f"{key}_commands": []
                for key in ("initialization", "setup", "head_setup", "worker_setup")
            },
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """What the head (and a driver of this cluster) runs with."""
        env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            # An integer: the monitor parses it with int().
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "disabled",
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": _HEAD_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": _HEAD_ID,
            "RAY_USAGE_STATS_ENABLED": "0",
            **self.extra_env,
        }
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, timeout_s: float = 120) -> FakeAutoscalingCluster:
        config = Path(self.temp) / "autoscaling.json"
        config.write_text(json.dumps(self.config))
        ray = Path(sys.executable).parent / "ray"
        log = open(Path(self.temp) / "head.log", "wb")  # noqa: SIM115 - the head outlives this call
        self.proc = subprocess.Popen(
            [
                str(ray),
                "start",
                "--head",
                "--block",
                f"--autoscaling-config={config}",
                f"--port={self.port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                f"--temp-dir={self.temp}",
                *(f"--{name}={free_port()}" for name in PORTS),
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                f"--object-store-memory={100 * _MIB}",
                "--disable-usage-stats",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout_s
        # Up means the autoscaler has reported once, not only that the head answers: a monitor
        # that fails on its config leaves a head that answers and never scales. And the head's
        # raylet is registered: a driver joins through it, and on a loaded machine it can come
        # up after the GCS and the monitor (ray.init then waits 60 s and gives up).
        while not (self._answers() and self._autoscaler_reported() and self._head_alive()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop(keep_logs=True)
                raise RuntimeError(
                    f"the fake autoscaling cluster did not start; see {log.name} and "
                    f"{self.temp}/session_latest/logs/monitor.err"
                )
            time.sleep(0.5)
        return self

    def _autoscaler_reported(self) -> bool:
        from ray._raylet import GcsClient
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        try:
            raw = GcsClient(self.address).get_cluster_status(timeout_s=5)
        except Exception:  # the GCS is still starting
            return False
        reply = GetClusterStatusReply()
        reply.ParseFromString(raw)
        return reply.autoscaling_state.autoscaler_state_version > 0

    def _head_alive(self) -> bool:
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        try:
            nodes = GcsClient(self.address).get_all_node_info(
                timeout=5, state_filter=GcsNodeInfo.GcsNodeState.ALIVE
            )
        except Exception:  # the GCS is still starting
            return False
        return any(node.is_head_node for node in nodes.values())

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the head's own logs (raylet, GCS, monitor): what a failed connect
        or a node that never came leaves behind, before `stop` removes them."""
        logs = Path(self.temp) / "session_latest" / "logs"
        parts = []
        for name in ("raylet.out", "gcs_server.out", "monitor.log", "monitor.err"):
            path = logs / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def _answers(self) -> bool:
        return answers(self.port, self.dashboard_port)

    def stop(self, keep_logs: bool = False) -> None:
        """Stop the head and every node the autoscaler started (one process group), and remove
        its temp dir unless ``keep_logs``."""
        if self.proc is not None and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            # A head told to stop drains for up to 30 s first; nothing here needs that.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        if not keep_logs:
            shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> FakeAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _custom(resources: dict[str, float]) -> set[str]:
    plain = {"CPU", "GPU", "memory", "object_store_memory"}
    return {k for k in resources if k not in plain and not k.startswith("node:")}


def node_kinds(worker_types: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Alive node id → its worker type (told apart by custom resources), or "head". Dead nodes
    are left out: Ray lists them without resources, which would read as the head."""
    import ray

    keys = {name: _custom(t["resources"]) for name, t in worker_types.items()}
    kinds = {}
    for node in ray.nodes():
        if node.get("Alive"):
            have = _custom(node.get("Resources", {}))
            kinds[node["NodeID"]] = next((n for n, k in keys.items() if k and k <= have), "head")
    return kinds


def node_counts(worker_types: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Alive nodes per worker type; "head" for the rest."""
    return _count(node_kinds(worker_types), worker_types)


def _count(kinds: dict[str, str], worker_types: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys([*worker_types, "head"], 0)
    for kind in kinds.values():
        counts[kind] += 1
    return counts


class NodeSampler:
    """Samples the nodes every `every_s` in a thread: `samples` → [(seconds since start, counts)],
    and `kinds`, every node seen alive → its type (a node scaled down since still has one)."""

    def __init__(self, worker_types: dict[str, dict[str, Any]], every_s: float = 0.5) -> None:
        import threading

        self.worker_types = worker_types
        self.every_s = every_s
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.kinds: dict[str, str] = {}
        self.t0 = time.monotonic()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._halt.is_set():
            # A GCS call may fail during shutdown; the next sample will tell.
            with contextlib.suppress(Exception):
                kinds = node_kinds(self.worker_types)
                self.kinds.update(kinds)
                self.samples.append((time.monotonic() - self.t0, _count(kinds, self.worker_types)))
            self._halt.wait(self.every_s)

    def __enter__(self) -> NodeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join()

    def first(self, kind: str, at_least: int = 1) -> float | None:
        """Seconds until `kind` first had `at_least` nodes."""
        return next((t for t, c in self.samples if c[kind] >= at_least), None)

    def peak(self, kind: str) -> int:
        return max((c[kind] for _, c in self.samples), default=0)
