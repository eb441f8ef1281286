"""Live progress of a real study (issue: a long study you can watch): on a terminal (a real pty)
every running trial shows its epoch k/n, its phase and an ETA, and the elapsed clock moves while a
trial certifies for seconds without reporting; with stdout to a file each event is one plain line
without control characters. Real Ray, real MLflow, a real randomized-smoothing certification."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_study

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _study(name: str) -> dict:
    """Two trials on digits, then a smoothing certification long enough to watch (seconds on 2 cores)."""
    return tiny_study(
        name,
        methods=[{"name": "erm"}],
        training={"epochs": 3, "batch_size": 128, "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}},
        evaluation={
            "attack": {"norm": "l2", "eps": 0.25, "steps": 2},
            "radii": {"l2": [0.0, 0.25]},
            "val_subset": 128,
            "test_subset": 200,
            "certify_subset": 200,
            "certifiers": [{"name": "smoothing", "params": {"sigma": 0.25, "n0": 64, "n": 40000, "alpha": 0.01}}],
        },
        search={"num_trials": 2, "max_concurrent": 2, "seed": 0},
    )


def _launch_argv(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_study(name)))
    return [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(tmp_path / "work")]


def test_the_live_view_on_a_terminal_shows_epoch_phase_and_eta_and_its_clock_moves(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _launch_argv(tmp_path, "watched"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color"},
        close_fds=True,
    )
    os.close(slave)
    frames: list[tuple[float, str]] = []  # (when read, text) chunks of the terminal stream
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                frames.append((time.monotonic(), ANSI.sub("", chunk.decode(errors="replace"))))
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        os.close(master)
    text = "".join(chunk for _, chunk in frames)
    assert proc.returncode == 0, text[-3000:]
    trial_lines = re.findall(r"trial \d+ \(erm\) epoch (\d+)/3 \| (\w+)[^|]*\|[^|]*\| ETA ([\d:-]+)", text)
    assert trial_lines, text[-3000:]
    assert {phase for _, phase, _ in trial_lines} >= {"training", "certifying"}, set(trial_lines)
    assert any(eta != "-" for _, _, eta in trial_lines), trial_lines
    # the study line's clock while some trial was certifying (no epoch report comes then)
    certifying = [chunk for _, chunk in frames if re.search(r"\| certifying smoothing \d+/200", chunk)]
    clocks = {m for chunk in certifying for m in re.findall(r"elapsed (\d+:\d\d)", chunk)}
    assert len(clocks) >= 2, (clocks, certifying[:3])
    assert re.search(r"\d+/\d+ done .* running, \d+ pending", text)


def test_with_stdout_to_a_file_each_event_is_one_plain_line(tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        done = subprocess.run(
            [*_launch_argv(tmp_path, "logged"), "--verbose"], stdout=out, stderr=subprocess.STDOUT, timeout=600
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), repr(text[:500])  # no escape codes, no \r redraws
    lines = text.splitlines()
    for number in (0, 1):
        mine = [line for line in lines if f"trial {number} (erm)" in line]
        assert any(line.endswith("started") or " started  (" in line for line in mine), mine
        assert any(re.search(r"epoch 3/3: val/robust_acc=", line) for line in mine), mine  # --verbose
        assert any("certifying smoothing" in line for line in mine), mine
        assert any("completed: " in line for line in mine), mine
    # the results table: certified accuracy at the main radius for each certificate, the searched parameter
    assert "top trials of logged by val/robust_acc (max), 2 finished" in text, text[-3000:]
    assert "certified smoothing l2 r=0.25" in text and "training.lr" in text, text[-3000:]


def test_status_tells_a_running_study_from_an_interrupted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a live process holds the study, ``status`` says so (no resume advice) and shows each
    running trial's epoch and phase; once it is interrupted, it says how to resume."""
    from certstudy.cli import main
    from conftest import launch_and_interrupt

    seen: dict[str, str] = {}

    def look(hold: Path) -> None:
        time.sleep(2.5)  # the driver rewrites its progress file every second
        assert main(["status", "held", "--workdir", str(tmp_path / "work")]) == 0
        seen["running"] = capsys.readouterr().out

    spec = tiny_study("held", training={"epochs": 3, "batch_size": 128}, search={"num_trials": 2, "seed": 0})
    code, out, work = launch_and_interrupt(tmp_path, spec, hold_from=0, hold_epoch=0, held=2, act=look)
    assert code == 0, out
    running = seen["running"]
    assert "running now: pid " in running and "certstudy resume" not in running, running
    assert re.search(r"│\s+0 │ running\s+│\s+\d+ │ (training|evaluating)", running), running

    spec2 = tiny_study("stopped", training={"epochs": 3, "batch_size": 128}, search={"num_trials": 2, "seed": 0})
    (tmp_path / "hold").rename(tmp_path / "hold-1")
    code, out, work = launch_and_interrupt(tmp_path, spec2, hold_from=0, hold_epoch=0, held=2)
    assert code == 130, out
    capsys.readouterr()
    assert main(["status", "stopped", "--workdir", str(work)]) == 0
    stopped = capsys.readouterr().out
    assert "running now" not in stopped and "certstudy resume stopped" in stopped, stopped
