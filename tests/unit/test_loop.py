"""The loop's progress lines: often enough to see it move, with a time left."""

from __future__ import annotations

import re
import time

from raydr.training.loop import _Meter


def test_progress_lines_come_every_n_steps_or_after_silence_with_an_eta() -> None:
    meter = _Meter(every_s=0.2)
    assert meter.due(1, log_every=10)  # the first step always shows
    assert not meter.due(2, log_every=10)
    assert meter.due(10, log_every=10)
    time.sleep(0.25)
    assert meter.due(11, log_every=10), "a slow run must still print every every_s seconds"
    meter.t_start = time.perf_counter() - 20.0  # 20 s for 4 steps: 5 s a step
    assert re.fullmatch(r"\(5\.0 s/step, 1 min 0 s left\)", meter.eta(done=4, left=12))
