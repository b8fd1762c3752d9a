"""`gateway accounts ...`: operator commands for citizen accounts.

`gateway accounts expire` expires accounts unused for `expire_unused_days` (issue 5 item 9:
three years). Safe from cron: idempotent, commits in batches, exit 0 with the count on stdout,
a one-line reason on stderr and exit 1 when configuration or the database is unusable.
"""

from __future__ import annotations

import click


@click.group("accounts")
def accounts() -> None:
    """Citizen accounts."""


@accounts.command("expire")
def expire() -> None:
    """Expire accounts that have not been used for the policy's expire_unused_days."""
    # Imported here: gateway.cli imports this module to add the group.
    from gateway import clock
    from gateway.accounts.service import expire_unused
    from gateway.app import get_policies, get_settings
    from gateway.cli import batch_work, load_app
    from gateway.db import get_db

    app = load_app()
    with batch_work(app), get_db(app).sessionmaker() as session:
        count = expire_unused(
            session, clock.now(), get_policies(app).accounts, settings=get_settings(app)
        )
    click.echo(f"{count} accounts expired")
