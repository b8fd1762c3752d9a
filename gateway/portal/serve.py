"""Serving the demo portal beside the gateway (`gateway demo --portal-port`).

The gateway's server (granian, gateway.server) serves one application, so the portal runs in a
second process: a fresh interpreter (`python -m gateway.portal.serve HOST PORT URL`), not a
fork, so nothing is shared with the gateway's workers and nothing is forked from a process with
threads. Its settings come from the same environment, with the demo's issuer and demo flag
added. It uses werkzeug's threaded server, which is enough for a demo relying party on
loopback (it never needed gunicorn, nor does it need granian).

Ctrl+C: the terminal sends SIGINT to the whole process group; the portal exits quietly, and
`gateway demo` also stops it when the server returns. granian forks its workers inside
`run()`; should a worker ever unwind through the caller's `finally`, it must not touch the
portal: `PortalProcess.stop` acts only in the process that started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Final

from gateway.settings import Settings

#: Seconds the portal gets to stop before it is killed.
STOP_TIMEOUT: Final = 5.0


class PortalProcess:
    def __init__(self, settings: Settings, host: str, port: int, portal_url: str) -> None:
        from gateway.portal.outbox import DEMO_FLAG

        env = {**settings.environ, "GATEWAY_ISSUER": settings.issuer, DEMO_FLAG: "1"}
        self._owner = os.getpid()
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway.portal.serve", host, str(port), portal_url],
            env=env,
        )

    def stop(self) -> None:
        if os.getpid() != self._owner:
            return  # a server worker (a fork of the owner) leaving run()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - stuck in a request
                self._process.kill()
                self._process.wait()


def start_portal(settings: Settings, host: str, port: int, portal_url: str) -> PortalProcess:
    return PortalProcess(settings, host, port, portal_url)


def serve_portal(host: str, port: int, portal_url: str) -> None:
    """The portal process: serve until interrupted or terminated."""
    import signal

    from werkzeug.serving import make_server

    from gateway.portal import create_portal

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # A background job may start with SIGINT ignored; Ctrl+C must still stop the portal.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    app = create_portal(Settings.from_env(), portal_url=portal_url)
    server = make_server(host, port, app, threaded=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # python -m gateway.portal.serve HOST PORT URL
    if len(sys.argv) != 4 or not sys.argv[2].isdigit():
        sys.exit("usage: python -m gateway.portal.serve HOST PORT PORTAL_URL")
    serve_portal(sys.argv[1], int(sys.argv[2]), sys.argv[3])
