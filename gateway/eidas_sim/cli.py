"""`gateway eidas-sim`: serve the eIDAS node simulator (a test and demo tool, issue 8 item 5).

The node's signing key is made on first start in `--key-dir` (default
`$GATEWAY_INSTANCE_DIR/eidas-sim`, folder 0700, files 0600). The connector's metadata is read
on the first login request from `--sp-metadata` (a URL or a file; default the gateway's
`$GATEWAY_ISSUER/eidas/metadata`), and read again when a request's signature does not verify.

It runs werkzeug's threaded server, enough for tests and a demo on loopback, and it is started
as a process of its own (`python -m gateway.eidas_sim.cli ...`) by `gateway demo`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

if TYPE_CHECKING:
    from gateway.settings import Settings

DEFAULT_PORT: Final = 8002
#: Seconds the simulator gets to stop before it is killed.
STOP_TIMEOUT: Final = 5.0


@click.command("eidas-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--sp-metadata", default=None, metavar="URL-OR-FILE",
              help="The connector's SAML metadata (default: $GATEWAY_ISSUER/eidas/metadata).")
@click.option("--key-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where the node's key lives (default: $GATEWAY_INSTANCE_DIR/eidas-sim).")
@click.option("--base-url", default=None, metavar="URL",
              help="The simulator's public URL (default: http://HOST:PORT).")
@click.option("--delay", default=0.0, show_default=True, type=click.FloatRange(0, 300),
              help="Seconds to wait before every answer (a slow node).")
def eidas_sim(host: str, port: int, sp_metadata: str | None, key_dir: Path | None,
              base_url: str | None, delay: float) -> None:
    """Serve a simulated foreign eIDAS node with test persons (tests and demos only)."""
    from werkzeug.serving import make_server

    # Imported here: gateway.cli imports this module to register the command.
    from gateway.cli import Failure, load_settings
    from gateway.eidas_sim.app import create_sim_app
    from gateway.eidas_sim.persons import COUNTRIES

    settings = load_settings()
    shown_host = f"[{host}]" if ":" in host else host
    base = (base_url or f"http://{shown_host}:{port}").rstrip("/")
    try:
        app = create_sim_app(settings, base_url=base, key_dir=key_dir, sp_metadata=sp_metadata,
                             delay=delay)
    except ValueError as exc:
        raise Failure(f"--base-url or --delay: {exc}") from None
    except OSError as exc:
        raise Failure(f"--key-dir: cannot create the node's key ({exc.strerror})") from None
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise Failure(f"--port: cannot listen on {host}:{port} ({exc.strerror})") from None

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Started in the background (gateway demo, tests), SIGINT may be ignored; stop on both.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    source = sp_metadata or settings.issuer + "/eidas/metadata"
    click.echo(f"eIDAS node simulator: {base}/   (test persons of {', '.join(COUNTRIES)})")
    click.echo(f"  metadata:    {base}/metadata")
    click.echo(f"  SP metadata: {source}   (read at the first login)")
    click.echo("  Stop with Ctrl+C.", nl=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# --- beside `gateway demo` -------------------------------------------------------------------


def demo_sim_url(settings: Settings, host: str) -> str | None:
    """Where `gateway demo` runs the simulator: only when routes.yaml enables the eIDAS route."""
    from gateway.policy import load_policies

    block = load_policies(settings.policies_dir).routes.routes.get("eidas")
    if block is None or not block.enabled:
        return None
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{DEFAULT_PORT}"


def demo_sim_lines(settings: Settings, host: str, taken: tuple[int, ...]) -> list[str]:
    """The lines `gateway demo` prints about the simulator (none when eIDAS is disabled)."""
    from gateway.cli import Failure

    url = demo_sim_url(settings, host)
    if url is None:
        return []
    if DEFAULT_PORT in taken:
        raise Failure(f"--port/--portal-port: {DEFAULT_PORT} is the eIDAS node simulator's port")
    lines = [f"eIDAS node (sim):   {url}/   (a foreign eIDAS node; its test persons are "
             "listed there)"]
    block = load_eidas_block(settings)
    configured = str(block.get("node_metadata_url", ""))
    if configured and configured != url + "/metadata":
        lines.append(f"                    note: routes.yaml names {configured} as the node, "
                     f"not {url}/metadata")
    return lines


def load_eidas_block(settings: Settings) -> dict[str, object]:
    from gateway.policy import load_policies

    block = load_policies(settings.policies_dir).routes.routes.get("eidas")
    return block.settings if block is not None else {}


class SimProcess:
    """The simulator in a process of its own (a fresh interpreter, not a fork), as the demo
    portal runs (gateway.portal.serve); only the process that started it stops it, so a
    server worker (a fork) leaving `run()` leaves it alone."""

    def __init__(self, settings: Settings, host: str, url: str) -> None:
        self._owner = os.getpid()
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway.eidas_sim.cli", "--host", host,
             "--port", str(DEFAULT_PORT), "--base-url", url,
             "--sp-metadata", settings.issuer + "/eidas/metadata"],
            env={**settings.environ, "GATEWAY_ISSUER": settings.issuer},
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if os.getpid() != self._owner:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - stuck in a request
                self._process.kill()
                self._process.wait()


def start_demo_sim(settings: Settings, host: str) -> SimProcess | None:
    url = demo_sim_url(settings, host)
    return SimProcess(settings, host, url) if url is not None else None


if __name__ == "__main__":  # python -m gateway.eidas_sim.cli [options], as `gateway demo` runs it
    eidas_sim(prog_name="gateway eidas-sim")
