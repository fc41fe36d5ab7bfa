"""A job told to stop (SIGTERM) raises JobTerminated in the main thread, once, and exits 128 + 15 with one line;
the JVM the driver starts ignores SIGTERM, so a signal to the whole process group reaches the driver's handler."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from adrec_spark import cli
from adrec_spark.errors import JobTerminated
from adrec_spark.termination import children_ignore_sigterm, terminate_as_error


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this at once


def test_the_first_sigterm_raises_and_later_ones_are_ignored_while_it_stops() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with terminate_as_error():
        with pytest.raises(JobTerminated) as info:
            _sigterm_self()
        assert info.value.signum == signal.SIGTERM and "SIGTERM" in str(info.value)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one while the rollback runs: logged, nothing raised
        time.sleep(0.2)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_jobterminated_is_not_caught_by_except_exception() -> None:
    with pytest.raises(JobTerminated), terminate_as_error():
        try:
            _sigterm_self()
        except Exception:  # a retry loop's handler must not swallow the stop
            pytest.fail("JobTerminated was caught as an Exception")


def test_a_job_stopped_by_sigterm_exits_143_with_one_line(monkeypatch, capsys) -> None:
    def fake_score(args, cfg) -> int:
        _sigterm_self()
        return 0

    monkeypatch.setattr(cli, "cmd_score", fake_score)
    assert cli.main(["score", "--date", "2024-01-14"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()  # the log's warning, then the one line for the user
    assert err[-1].startswith("adrec score: stopped by SIGTERM") and "Traceback" not in "".join(err)


def test_a_process_started_inside_children_ignore_sigterm_survives_sigterm() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with children_ignore_sigterm():
        inside = subprocess.Popen(["sleep", "30"])
    outside = subprocess.Popen(["sleep", "30"])
    try:
        assert signal.getsignal(signal.SIGTERM) is before
        inside.send_signal(signal.SIGTERM)
        outside.send_signal(signal.SIGTERM)
        assert outside.wait(timeout=10) == -signal.SIGTERM  # the control: SIGTERM ends a plain child
        with pytest.raises(subprocess.TimeoutExpired):
            inside.wait(timeout=0.5)
    finally:
        inside.kill()
        inside.wait()
