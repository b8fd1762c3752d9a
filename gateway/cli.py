"""The `gateway` command line (shared/INTERFACE.md, "Command line").

Every command exits non-zero with a one-line reason on bad input: configuration and policy
errors are caught here and printed as `gateway: <reason>`, never as a traceback.
Subsystems keep their commands beside their code (a click group each) and are added below.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
from flask import Flask

from gateway.policy import PolicyError
from gateway.settings import Settings, SettingsError, is_loopback_host

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A one-line reason; exit code 1 (2 for usage errors, as click does)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"gateway: {self.format_message()}", err=True)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise Failure(str(exc)) from None


def load_app(settings: Settings | None = None) -> Flask:
    from gateway.app import create_app

    try:
        return create_app(settings or load_settings())
    except (SettingsError, PolicyError) as exc:
        raise Failure(str(exc)) from None


@contextlib.contextmanager
def batch_work(app: Flask) -> Iterator[None]:
    """For commands that work through the database in batches (`purge`, `accounts expire`):
    a database or store error becomes one line saying that finished batches stay done (the
    class only: a driver's message may carry the URL), and the app's connections are
    closed at the end."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.db import get_db
    from gateway.store import StoreUnavailable

    try:
        with app.app_context():
            yield
    except (SQLAlchemyError, StoreUnavailable) as exc:
        raise Failure(
            f"database error ({type(exc).__name__}); batches already done stay done, "
            "run the command again"
        ) from None
    finally:
        get_db(app).dispose()


def one_line_errors(func: F) -> F:
    """Turn configuration errors raised inside a command into the one-line form."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SettingsError, PolicyError) as exc:
            raise Failure(str(exc)) from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="abroad-gateway", prog_name="gateway")
def main() -> None:
    """abroad-gateway: an identity front door for people who live abroad."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; an IPv6 address such as :: works too.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes; a dead one is restarted.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 32),
              help="Request threads per worker (they share one Python GIL).")
@one_line_errors
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Run the gateway (granian, HTTP/1.1; several worker processes with --workers).

    Put it behind a reverse proxy (GATEWAY_PROXY_HOPS, GATEWAY_FORWARDED_ALLOW_IPS); SIGTERM
    lets requests in flight finish (10 s at most).
    """
    from gateway.server import run

    settings = load_settings()
    if settings.dev and "GATEWAY_ENV" not in settings.environ and not is_loopback_host(host):
        # Dev mode is the default so that a newcomer needs nothing; it must not be what a
        # deployment gets by forgetting a variable (outbox SMS and mail, a generated key).
        raise Failure(
            f"GATEWAY_ENV: not set, so this is dev mode, which serves loopback only; set "
            f"GATEWAY_ENV=production, or GATEWAY_ENV=dev to serve dev mode on {host}"
        )
    load_app(settings)  # fail fast, with one line, before granian starts its workers
    run(settings, host=host, port=port, workers=workers, threads=threads)




@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--portal-port", default=8001, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the demo portal (a relying party) served beside the gateway.")
@one_line_errors
def demo(host: str, port: int, portal_port: int) -> None:
    """Seed demo data, print what to open and type, and serve (with the demo portal)."""
    from gateway.demo import run_demo

    run_demo(host, port, portal_port)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply migrations to GATEWAY_DATABASE_URL."""
    from sqlalchemy.exc import OperationalError

    from gateway.db import upgrade

    settings = load_settings()
    try:
        upgrade(settings.database_url)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else "no answer"
        raise Failure(f"GATEWAY_DATABASE_URL: cannot reach the database ({reason})") from None
    click.echo("database is at the newest revision")


@main.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what is due; remove nothing.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None,
              help="Rows per transaction (default 500).")
@one_line_errors
def purge(dry_run: bool, batch_size: int | None) -> None:
    """Remove expired login flows, codes, tokens and sessions, and SMS delivery records past
    their retention (gateway.purge); safe from cron.

    Prints the rows removed per table as one JSON object (with --dry-run: the rows due).
    """
    # Imported here: the models are not needed by every other command.
    import json

    from gateway.purge import purge_all

    app = load_app()
    with batch_work(app):
        counts = purge_all(app, dry_run=dry_run, batch_size=batch_size)
    click.echo(json.dumps(counts))


from gateway.mail.cli import mail as mail_commands  # noqa: E402 - after main exists

main.add_command(mail_commands)

from gateway.desks.cli import register as register_commands  # noqa: E402 - after main exists

main.add_command(register_commands)

from gateway.keys import keys_cli  # noqa: E402 - after main exists

main.add_command(keys_cli)

from gateway.audit import audit_cli  # noqa: E402 - after main exists

main.add_command(audit_cli)

from gateway.desks.cli_staff import desk as desk_commands  # noqa: E402 - after main exists

main.add_command(desk_commands)

from gateway.sms.cli import sms as sms_commands  # noqa: E402 - after main exists

main.add_command(sms_commands)

# The rp modules import this one (Failure, load_app): loaded by name, so that mypy does not
# have to resolve the import cycle to type them.
rp_commands: click.Group = importlib.import_module("gateway.idp.oidc.cli").rp
main.add_command(rp_commands)
rp_commands.add_command(importlib.import_module("gateway.idp.saml.cli").add_saml)

from gateway.accounts.cli import accounts as account_commands  # noqa: E402 - after main exists

main.add_command(account_commands)

from gateway.eidas_sim.cli import eidas_sim  # noqa: E402 - after main exists

main.add_command(eidas_sim)


def run() -> None:  # pragma: no cover - console entry point alias
    sys.exit(main())
