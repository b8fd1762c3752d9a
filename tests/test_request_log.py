"""The request log is written in blocks, everything else at once, and nothing is lost at a
normal exit, also in a worker process (gateway.web.logs.JsonLinesHandler)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import time

import pytest

from gateway.web import logs


def _handler() -> tuple[logs.JsonLinesHandler, io.StringIO]:
    handler = logs.JsonLinesHandler()
    stream = io.StringIO()
    handler.setStream(stream)
    handler.setFormatter(logs.JsonFormatter())
    return handler, stream


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def _messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


def test_request_lines_wait_and_other_records_keep_the_order() -> None:
    handler, stream = _handler()
    handler.handle(_record("gateway.request", logging.INFO, "r1"))
    handler.handle(_record("gateway.request", logging.INFO, "r2"))
    assert stream.getvalue() == ""  # waiting
    handler.handle(_record("gateway.flows", logging.WARNING, "w"))
    assert _messages(stream) == ["r1", "r2", "w"]  # the warning at once, after what waited
    handler.handle(_record("gateway.request", logging.INFO, "r3"))
    handler.handle(_record("gateway.request", logging.ERROR, "r4"))  # not INFO: at once
    assert _messages(stream) == ["r1", "r2", "w", "r3", "r4"]
    handler.handle(_record("gateway.request", logging.INFO, "r5"))
    handler.flush()
    assert _messages(stream)[-1] == "r5"


def test_a_full_block_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_CHARS", 600)
    handler, stream = _handler()
    sent = 0
    while not stream.getvalue():
        handler.handle(_record("gateway.request", logging.INFO, f"r{sent}"))
        sent += 1
        assert sent < 50
    assert _messages(stream) == [f"r{i}" for i in range(sent)]


def test_waiting_lines_go_out_when_no_request_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_SECONDS", 0.05)
    handler, stream = _handler()
    handler.handle(_record("gateway.request", logging.INFO, "alone"))
    deadline = time.monotonic() + 10  # a bound for a stuck timer, not a timing assertion
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _messages(stream) == ["alone"]


def test_nothing_is_lost_or_doubled_at_exit_of_a_process_and_its_worker() -> None:
    """A granian worker is a forked multiprocessing child that ends with os._exit: its
    lines are written by its exit finalizer; the parent's waiting lines are not written
    twice by the child."""
    program = textwrap.dedent("""
        import logging, multiprocessing
        from gateway.web.logs import configure_logging, request_log
        configure_logging()
        request_log.info("before the fork")

        def worker():
            request_log.info("in the worker")

        child = multiprocessing.get_context("fork").Process(target=worker)
        child.start()
        child.join()
        request_log.info("after the worker")
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=True)
    messages = [json.loads(line)["message"] for line in done.stderr.splitlines()]
    assert sorted(messages) == ["after the worker", "before the fork", "in the worker"]


def test_the_timer_does_not_depend_on_time_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test elsewhere may replace time.sleep (for its own module: the module object is
    shared); the timer thread must neither spin on it nor stop working."""
    calls: list[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)
    monkeypatch.setattr(logs, "FLUSH_SECONDS", 0.05)
    handler, stream = _handler()
    handler.handle(_record("gateway.request", logging.INFO, "alone"))
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        logs.threading.Event().wait(0.02)
    assert _messages(stream) == ["alone"]
    assert calls == []
