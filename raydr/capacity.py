"""Will the cluster hold this work: now, or once its autoscaler has added nodes?

raydr refuses work that can never be placed in one clear line, where Ray alone would wait
forever. On a fixed cluster that is a comparison with what the nodes offer now. On an
autoscaling cluster (node types with ``min_workers: 0``) those nodes do not exist yet, so the
comparison proves nothing: raydr asks instead. It places a probe placement group of the same
shape (PACK, so it may span nodes). Ray's autoscaler sees it as demand and starts nodes; once the
probe is placed it is removed, and the real work starts on nodes that are up. If the autoscaler
(v2) reports the probe infeasible, meaning no node type it may still start holds it, for
``settle_s``, raydr raises naming the config field. A v1 autoscaler does not report; with
``ray.autoscaler: yes`` raydr waits for it up to ``timeout_s``. When work ends, its request for
nodes is withdrawn (``release_nodes``), so the autoscaler can take them back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from raydr.errors import RaydrError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demand:
    """``count`` × ``bundle`` (one worker's or one validator's resources), asked for by the
    config ``field`` that errors name; ``hint`` says what to change."""

    field: str
    bundle: dict[str, float]
    count: int
    hint: str = ""

    def shape(self) -> dict[str, float]:
        """The bundle without zero amounts (a placement group refuses them)."""
        return {k: float(v) for k, v in self.bundle.items() if v > 0}

    def describe(self) -> str:
        inner = ", ".join(f"{k}: {v:g}" for k, v in sorted(self.shape().items()))
        return f"{self.count} × {{{inner}}}"


def _status():
    """The v2 autoscaler's last report (``AutoscalingState``), or None where none reports."""
    import ray
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    try:
        raw = GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10)
    except Exception:  # an older GCS or none reachable: treat as "no autoscaler says anything"
        return None
    reply = GetClusterStatusReply()
    reply.ParseFromString(raw)
    state = reply.autoscaling_state
    return state if state.autoscaler_state_version > 0 else None


def autoscaling(mode: str = "auto") -> bool:
    """Whether nodes may still be added to the connected cluster: ``auto`` trusts a v2
    autoscaler's report (every Ray, even a laptop's, runs a v1 monitor that cannot add
    anything, so v1 is not taken as a sign); ``yes``/``no`` say so outright."""
    if mode != "auto":
        return mode == "yes"
    return _status() is not None


def shortfall(demand: Demand, total: dict[str, float]) -> str | None:
    """What the live cluster lacks for ``demand`` (by totals), or None when it has enough."""
    for name, amount in sorted(demand.shape().items()):
        need = amount * demand.count
        have = total.get(name, 0.0)
        if need > have + 1e-9:
            return f"{demand.describe()} needs {need:g} {name}, but the cluster has {have:g}"
    return None


def ensure(
    demands: list[Demand],
    *,
    autoscaler: str = "auto",
    timeout_s: float = 900.0,
    settle_s: float = 10.0,
) -> dict[str, float]:
    """Return once every demand fits; → seconds waited for the autoscaler, per field.

    Raises RaydrError naming the field when a demand cannot fit: at once on a cluster without an
    autoscaler (see ``autoscaling``), after ``settle_s`` of "infeasible" from a v2 autoscaler,
    or after ``timeout_s``.
    """
    import ray

    total = ray.cluster_resources()
    short = [(d, why) for d in demands if (why := shortfall(d, total))]
    if not short:
        return {}
    if not autoscaling(autoscaler):
        d, why = short[0]
        raise RaydrError(
            f"{d.field}: {why}; {d.hint or 'ask for less'} (or add nodes; an autoscaler would)"
        )
    return _probe([d for d, _ in short], timeout_s, settle_s)


def _probe(demands: list[Demand], timeout_s: float, settle_s: float) -> dict[str, float]:
    """One probe placement group per demand, all at once, so node types scale up in parallel."""
    from ray.util.placement_group import placement_group, remove_placement_group

    start = time.monotonic()
    probes = {
        d.field: (d, placement_group([d.shape()] * d.count, strategy="PACK")) for d in demands
    }
    log.info(
        "waiting for the autoscaler to add nodes for %s",
        "; ".join(f"{d.field} ({d.describe()})" for d, _ in probes.values()),
    )
    waited: dict[str, float] = {}
    infeasible_since: dict[str, float] = {}
    try:
        while len(waited) < len(probes):
            now = time.monotonic()
            status = _status()
            listed = (
                {g.details.split(":")[0] for g in status.infeasible_gang_resource_requests}
                if status is not None
                else set()
            )
            for field, (d, pg) in probes.items():
                if field in waited:
                    continue
                if pg.wait(timeout_seconds=0.01):
                    waited[field] = now - start
                    log.info("%s fits after %.1f s", field, waited[field])
                    continue
                if pg.id.hex() not in listed:
                    infeasible_since.pop(field, None)
                    continue
                since = infeasible_since.setdefault(field, now)
                if now - since >= settle_s:
                    raise RaydrError(
                        f"{field}: {d.describe()} cannot be placed: the autoscaler reports that "
                        f"no node type it may start holds it (or every type is at its "
                        f"max_workers); {d.hint or 'ask for less'}, or add a node type that fits"
                    )
            if now - start > timeout_s:
                late = [f for f in probes if f not in waited]
                raise RaydrError(
                    f"{', '.join(late)}: no nodes to hold it within ray.scale_up_timeout_s="
                    f"{timeout_s:g} s ({'; '.join(probes[f][0].describe() for f in late)}); "
                    f"check the cluster's node types and the autoscaler's log"
                )
            time.sleep(0.5)
    finally:
        for _, pg in probes.values():
            remove_placement_group(pg)
    return waited


def release_nodes(run_id: str) -> bool:
    """Withdraw Train run ``run_id``'s standing request to Ray's autoscaling coordinator.

    Train withdraws it itself when a run ends, but not when its controller dies with the Tune
    trial that owns it (a trial the scheduler stops): the autoscaler then keeps that trial's
    nodes until the request expires, up to 200 s later (180 s plus one 20 s coordinator tick).
    → whether a coordinator was there to ask."""
    import ray

    try:
        coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    except ValueError:  # no Train run on this cluster has asked for anything
        return False
    # Train's requester id for a run (ray.train.v2 scaling_policy.after_controller_start).
    ray.get(coordinator.cancel_request.remote(f"train-{run_id}"), timeout=30)
    return True
