"""`gateway demo`: a working gateway on one machine, with demo data, in one command.

Refuses to run outside dev mode. Applies migrations, makes sure the keys exist, seeds what the
subsystems offer (each seeder is idempotent and returns lines to print), prints exactly what to
open and type, and serves.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from flask import Flask

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
    return found


def run_demo(host: str, port: int) -> None:
    from gateway.cli import Failure, load_app, load_settings
    from gateway.db import upgrade
    from gateway.server import run

    settings = load_settings()
    if not settings.dev:
        raise Failure("GATEWAY_ENV: the demo runs in dev mode only")
    base = f"http://{host}:{port}"
    if "GATEWAY_ISSUER" not in settings.environ:
        # The demo's issuer follows where it listens, so WebOTP lines and redirects match.
        settings = settings.with_overrides(issuer=base)
    upgrade(settings.database_url)
    app = load_app(settings)
    lines = [
        "",
        "abroad-gateway demo",
        "===================",
        f"Gateway:            {base}/",
        f"Health:             {base}/healthz   {base}/readyz   {base}/metrics",
        f"Instance folder:    {settings.instance_dir}",
        f"SMS outbox (dev):   {settings.sms_outbox}",
        f"Mail outbox (dev):  {settings.mail_outbox}",
    ]
    with app.app_context():
        for seed in seeders():
            lines.extend(seed(app))
    lines += ["", "Stop with Ctrl+C.", ""]
    click.echo("\n".join(lines))
    run(settings, host=host, port=port, workers=1)
