"""cluster/: ray-up YAMLs pass Ray's own autoscaler schema; KubeRay manifests carry what they must."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_ray_up_configs_pass_the_autoscaler_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    # What `ray up` does before launching anything: fill in defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    # CPUs on the head for Tune's trial actors (and the Train controllers that follow them),
    # which would otherwise be placed on spot GPU nodes; no train_node / val_node there.
    assert types[config["head_node_type"]]["resources"] == {"CPU": 2}
    assert (
        types["train_gpu"]["min_workers"] == 0 and "train_node" in types["train_gpu"]["resources"]
    )
    assert "val_node" in types["val_gpu"]["resources"]
    assert config["idle_timeout_minutes"] > 0
    assert any("raydr" in c for c in config["setup_commands"])


def test_schema_check_catches_a_broken_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    config["available_node_types"]["train_gpu"]["min_workers"] = "zero"
    with pytest.raises(Exception, match="zero"):
        validate_config(prepare_config(config))


def test_kuberay_manifests() -> None:
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"  # what raydr's capacity check reads
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"train-gpu", "val-gpu"}
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert "raydr train jobs/scifact-train.yaml" in job["spec"]["entrypoint"]
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["pip"]


def test_runtime_env_keeps_data_out_of_the_upload() -> None:
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert {"data/", "runs/", ".venv/"} <= set(env["excludes"])
