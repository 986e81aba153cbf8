"""A search warns at its start when stopped trials could not give their resources back."""

from __future__ import annotations

import logging

import pytest
import ray

pytestmark = pytest.mark.ray


def test_a_search_without_the_state_api_is_warned_of_leaks(caplog) -> None:
    from raydr.tuning.search import warn_without_state_api

    # Ray Train's placement-group cleaner asks the dashboard's State API whether a stopped
    # trial's controller is gone; a Ray without it leaks every stopped trial's resources.
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024**2)
    try:
        with caplog.at_level(logging.WARNING, logger="raydr.tuning.search"):
            warn_without_state_api()
    finally:
        ray.shutdown()
    assert any(
        "State API is unreachable" in r.getMessage() and "ray[default]" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
