"""Reports without a checkpoint in a study that does not prune go through a thread of the trial's own
(``trainable.PipelinedReports``): the trial trains on while the driver takes them, the driver still
sees every result once and in order, and a stop raised by the report reaches the trial's thread."""

from __future__ import annotations

import threading
import time

import pytest

from certstudy.study.engine.trainable import PipelinedReports


def test_submit_returns_at_once_and_drain_waits_for_every_result_in_order() -> None:
    taken: list[int] = []
    gate = threading.Event()

    def slow_report(metrics: dict) -> None:  # the driver, slow to take a result
        gate.wait(5)
        taken.append(metrics["epoch"])

    reports = PipelinedReports(slow_report)
    t = time.perf_counter()
    for epoch in range(5):
        reports.submit({"epoch": epoch})
    assert time.perf_counter() - t < 0.5 and taken == []  # the trial was not held
    gate.set()
    reports.drain()
    assert taken == [0, 1, 2, 3, 4]
    reports.submit({"epoch": 5})
    reports.close()
    assert taken == [0, 1, 2, 3, 4, 5]


def test_a_stop_raised_in_the_reporting_thread_reaches_the_trial() -> None:
    def stopping_report(metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise SystemExit(0)  # what Ray's report raises when the driver stops the trial

    reports = PipelinedReports(stopping_report)
    for epoch in range(3):
        reports.submit({"epoch": epoch})
    with pytest.raises(SystemExit):
        reports.drain()
    with pytest.raises(SystemExit):
        reports.submit({"epoch": 3})  # nothing more is reported after a stop
    reports.close()  # and closing after it neither hangs nor raises
