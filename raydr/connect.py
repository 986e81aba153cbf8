"""Connecting to Ray: the cluster the config names, the one ``ray job submit`` runs in, or a local
Ray sized by the ``ray`` section (laptop, CI, tests)."""

from __future__ import annotations

import os

from raydr.config import RaydrConfig
from raydr.errors import RaydrError


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a dead host:port; ray.init would retry for a long time first."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RaydrError(f"ray.address={address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RaydrError(
            f"ray.address={address!r}: cannot connect ({exc}); is the head running "
            f"(`ray start --head`, cluster/local.sh) and the port open?"
        ) from None


def init_ray(cfg: RaydrConfig) -> None:
    """Connect to ``ray.address``, or start a local Ray sized by the ``ray`` section."""
    import ray

    if ray.is_initialized():
        return
    rcfg = cfg.ray
    if not rcfg.address and os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit`: join the job's cluster; local sizing does not apply there.
        ray.init()
        return
    if rcfg.address:
        _check_reachable(rcfg.address)
        try:
            ray.init(address=rcfg.address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RaydrError(f"ray.address={rcfg.address!r}: cannot connect ({exc})") from None
        return
    # Keep the dashboard: Train V2's placement-group cleaner polls the State API it serves.
    # address="local": a new Ray of our size, even where a `ray start` cluster already runs
    # (plain ray.init() would join that one and reject the sizing).
    ray.init(
        address="local",
        num_cpus=rcfg.num_cpus,
        num_gpus=rcfg.num_gpus,
        object_store_memory=rcfg.object_store_memory,
    )
