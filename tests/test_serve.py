"""`gateway serve` for real: granian in a subprocess on a free loopback port (gateway.server).

Checks what operators rely on from the HTTP server: it answers; a request head that is far
too large is refused by the server (no 500); a body over MAX_CONTENT_LENGTH gets 413;
X-Forwarded-For from a peer outside GATEWAY_FORWARDED_ALLOW_IPS is ignored; a worker that
dies is started again; SIGTERM stops it with exit code 0.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from gateway.desks.auth import LOGIN_LIMIT_KEY_PREFIX
from gateway.server import KILL_TIMEOUT_S
from gateway.settings import Settings
from gateway.store import get_store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for the workers")

START_TIMEOUT = 20.0
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return found


def _wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gateway serve exited: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(self.base + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def raw(self, data: bytes) -> bytes:
        """Send `data` on a fresh connection; what came back (b"" if the server closed it)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            try:
                s.sendall(data)
                return s.recv(200)
            except (ConnectionResetError, BrokenPipeError):
                return b""


@pytest.fixture
def served(app: Flask, settings: Settings, tmp_path: Path) -> Iterator[Served]:
    port = _free_port()
    env = {
        **os.environ, **settings.environ,
        "GATEWAY_PROXY_HOPS": "1",
        "GATEWAY_FORWARDED_ALLOW_IPS": "192.0.2.1, 2001:db8::/32",  # not this test's 127.0.0.1
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("gateway")), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2", "--threads", "3"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Served(process, port, log)
    try:
        _wait_until(server.healthy, "/healthz")
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _login_attempts(app: Flask, address: str) -> int:
    settings: Settings = app.config["GATEWAY_SETTINGS"]
    digest = hmac.new(
        settings.derive_key("desk-login-ip"), address.encode(), hashlib.sha256
    ).hexdigest()
    return get_store(app).count(LOGIN_LIMIT_KEY_PREFIX + digest)


def test_gateway_serve_under_granian(served: Served, app: Flask) -> None:
    # A head far over the 64 KiB buffer: 431 from the server, or the connection closed.
    head = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 4000) for i in range(90))
    answer = served.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
    # More than 100 header fields.
    many = b"".join(b"X-F%d: 1\r\n" % i for i in range(120))
    answer = served.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer

    with requests.Session() as browser:
        page = browser.get(served.base + "/desk/login", timeout=10)
        assert page.status_code == 200
        match = _CSRF.search(page.text)
        assert match is not None
        token = match.group(1)

        # Over MAX_CONTENT_LENGTH (256 KiB): the app's 413 page. On a connection of its own:
        # the body is left unread, so the server closes the connection after the answer.
        big = requests.post(served.base + "/desk/login", timeout=10, cookies=browser.cookies,
                            data={"csrf_token": token, "filler": "x" * (300 * 1024)})
        assert big.status_code == 413
        assert "text/html" in big.headers["Content-Type"]

        # From 127.0.0.1, not an allowed proxy: X-Forwarded-For is not believed, so the failed
        # login counts against 127.0.0.1, not the address the client claims.
        before = _login_attempts(app, "127.0.0.1")
        failed = browser.post(
            served.base + "/desk/login", timeout=10,
            data={"csrf_token": token, "username": "nobody", "password": "wrong", "code": ""},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert failed.status_code == 200
        assert _login_attempts(app, "127.0.0.1") == before + 1
        assert _login_attempts(app, "198.51.100.7") == 0

    # A worker that dies is replaced, and the gateway keeps answering.
    workers = _children(served.process.pid)
    assert len(workers) == 2
    os.kill(min(workers), signal.SIGKILL)
    _wait_until(lambda: len(_children(served.process.pid) - workers) == 1, "a new worker")
    _wait_until(served.healthy, "/healthz after the respawn")

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(KILL_TIMEOUT_S + 5) == 0


def test_thread_and_worker_counts_are_bounded(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    for option, value in (("--threads", "0"), ("--threads", "33"), ("--workers", "0")):
        result = CliRunner().invoke(
            main, ["serve", option, value], env={"GATEWAY_INSTANCE_DIR": str(tmp_path / "i")}
        )
        assert result.exit_code == 2 and option in result.output


def test_the_process_environment_stays_out_of_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """granian starts each WSGI environ from a copy of os.environ (checked with granian
    2.8.9): the app must see only what the request brought."""
    from gateway.server import _RequestOnly

    monkeypatch.setenv("GATEWAY_SECRET_KEY", "secret-" + "x" * 40)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_X_FROM_ENV", "process value")
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        return []

    wrapped = _RequestOnly(app)  # type: ignore[arg-type]
    environ = {
        **os.environ,  # what granian copies
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.10",
        "HTTP_HOST": "gateway.example", "HTTP_X_FROM_ENV": "the client's own value",
    }
    wrapped(environ, lambda *_args: None)
    assert "GATEWAY_SECRET_KEY" not in seen and "PATH" not in seen
    assert "HTTP_PROXY" not in seen  # a variable, not a header the client sent
    assert seen["HTTP_X_FROM_ENV"] == "the client's own value"
    assert seen["HTTP_HOST"] == "gateway.example" and seen["REMOTE_ADDR"] == "192.0.2.10"


def test_dev_mode_by_default_serves_loopback_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deployment that forgot GATEWAY_ENV must not serve dev mode (outbox SMS and mail,
    a generated key) to the network."""
    from click.testing import CliRunner

    import gateway.server
    from gateway.cli import main

    served: list[str] = []
    monkeypatch.setattr(gateway.server, "run", lambda settings, host, **_: served.append(host))
    env = {"GATEWAY_INSTANCE_DIR": str(tmp_path / "i"), "GATEWAY_ENV": None}
    for host in ("0.0.0.0", "::", "10.1.2.3", "gateway.example"):
        result = CliRunner().invoke(main, ["serve", "--host", host], env=env)
        assert result.exit_code == 1, result.output
        assert "GATEWAY_ENV: not set, so this is dev mode, which serves loopback only" in (
            result.output
        )
    assert served == []
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        result = CliRunner().invoke(main, ["serve", "--host", host], env=env)
        assert result.exit_code == 0, result.output
    # Dev mode on the network when asked for explicitly.
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"],
                                env={**env, "GATEWAY_ENV": "dev"})
    assert result.exit_code == 0, result.output
    assert served == ["127.0.0.1", "::1", "localhost", "127.0.0.2", "0.0.0.0"]
