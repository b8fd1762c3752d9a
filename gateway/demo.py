"""`gateway demo`: a working gateway on one machine, with demo data, in one command.

Refuses to run outside dev mode. Applies migrations, makes sure the keys exist, seeds what the
subsystems offer (each seeder is idempotent and returns lines to print), prints exactly what to
open and type, and serves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from flask import Flask

if TYPE_CHECKING:
    from gateway.settings import Settings

#: Seeders in order; each takes the app and returns the lines it wants printed.
Seeder = Callable[[Flask], list[str]]


def seeders() -> list[Seeder]:
    found: list[Seeder] = []
    try:
        from gateway.desks.register import seed_demo as seed_register
    except ImportError:  # pragma: no cover - the register arrives with the desk issue
        pass
    else:
        found.append(seed_register)
    from gateway.desks.demo import seed_demo_staff

    found.append(seed_demo_staff)
    from gateway.accounts.demo import seed_demo_citizen

    found.append(seed_demo_citizen)
    from gateway.portal.seed import seed_portal

    found.append(seed_portal)
    return found


def demo_lines(settings: Settings, base: str, portal_url: str) -> list[str]:
    """What `gateway demo` prints before the seeders' lines: where everything is."""
    from gateway.portal.outbox import OUTBOX_PATH

    return [
        "",
        "abroad-gateway demo",
        "===================",
        f"Gateway:            {base}/",
        f"Demo portal (RP):   {portal_url}/   (log in there with OIDC or SAML)",
        f"Apply for account:  {base}/apply",
        f"Outboxes (dev):     {base}{OUTBOX_PATH}   (the SMS codes and e-mails the demo sent)",
        f"Health:             {base}/healthz   {base}/readyz   {base}/metrics",
        f"Instance folder:    {settings.instance_dir}",
        f"SMS outbox (dev):   {settings.sms_outbox}",
        f"Mail outbox (dev):  {settings.mail_outbox}",
    ]


def demo_policies(instance_dir: Path) -> Path:
    """A copy of the shipped policies in the instance folder with the eIDAS route enabled."""
    import shutil

    import yaml

    from gateway.settings import DEFAULT_POLICIES_DIR

    folder = instance_dir / "demo-policies"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    routes_file = folder / "routes.yaml"
    data = yaml.safe_load(routes_file.read_text(encoding="utf-8"))
    data["routes"]["eidas"]["enabled"] = True
    # The simulator's key (made now if new) signs its metadata: the demo's trust anchor.
    from gateway.eidas_sim.node import ensure_keys

    data["routes"]["eidas"]["node_metadata_signing_certificates"] = [
        str(ensure_keys(instance_dir / "eidas-sim").cert_path.resolve())
    ]
    routes_file.write_text(
        "# Written by `gateway demo`: the shipped routes.yaml with the eIDAS route enabled.\n"
        + yaml.safe_dump(data, sort_keys=False), encoding="utf-8",
    )
    return folder


def prepare_demo(host: str, port: int, portal_port: int) -> tuple[Settings, list[str], str]:
    """Everything of `gateway demo` except serving: settings, migrations, seeds, and the lines
    to print. Returns the settings to serve with, the lines and the portal URL."""
    from gateway.cli import Failure, load_app, load_settings
    from gateway.db import upgrade
    from gateway.portal.keys import PORTAL_URL_CONFIG
    from gateway.portal.outbox import DEMO_FLAG

    settings = load_settings()
    if not settings.dev:
        raise Failure("GATEWAY_ENV: the demo runs in dev mode only")
    if portal_port == port:
        raise Failure("--portal-port: must differ from --port")
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{shown_host}:{port}"
    portal_url = f"http://{shown_host}:{portal_port}"
    overrides: dict[str, Any] = {"environ": {**settings.environ, DEMO_FLAG: "1"}}
    if "GATEWAY_ISSUER" not in settings.environ:
        # The demo's issuer follows where it listens, so WebOTP lines and redirects match.
        overrides["issuer"] = base
    if "GATEWAY_POLICIES" not in settings.environ:
        # The shipped policies leave the eIDAS route off (a production gateway must name its
        # real eIDAS node first); the demo turns it on against the simulator it starts.
        overrides["policies_dir"] = demo_policies(settings.instance_dir)
    settings = settings.with_overrides(**overrides)
    upgrade(settings.database_url)
    app = load_app(settings)
    app.config[PORTAL_URL_CONFIG] = portal_url
    lines = demo_lines(settings, settings.issuer, portal_url)
    from gateway.eidas_sim.cli import demo_sim_lines

    # The eIDAS node simulator runs beside them when routes.yaml enables the eIDAS route.
    lines.extend(demo_sim_lines(settings, host, taken=(port, portal_port)))
    with app.app_context():
        for seed in seeders():
            lines.extend(seed(app))
    lines += ["", "Stop with Ctrl+C.", ""]
    return settings, lines, portal_url


def run_demo(host: str, port: int, portal_port: int = 8001) -> None:
    from gateway.portal.serve import start_portal
    from gateway.server import run

    settings, lines, portal_url = prepare_demo(host, port, portal_port)
    click.echo("\n".join(lines))
    portal = start_portal(settings, host, portal_port, portal_url)
    from gateway.eidas_sim.cli import start_demo_sim

    eidas_sim = start_demo_sim(settings, host)
    try:
        run(settings, host=host, port=port, workers=1)
    finally:
        portal.stop()
        if eidas_sim is not None:
            eidas_sim.stop()
