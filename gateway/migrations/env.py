"""Alembic environment: migrations run against the URL that `gateway.db.alembic_config` sets."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gateway.db import Base, import_models, make_engine

import_models()
target_metadata = Base.metadata
config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
