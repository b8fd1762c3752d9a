"""Migrations build an empty database and agree with the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from gateway.cli import main
from gateway.db import alembic_config, current_revision, import_models, make_engine, upgrade
from tests.conftest import TEST_DB, create_pg_database, drop_pg_database


@pytest.fixture
def empty_database(tmp_path: Path) -> Iterator[str]:
    if TEST_DB == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    name = f"gwmig_{secrets.token_hex(6)}"
    url = create_pg_database(name)
    try:
        yield url
    finally:
        drop_pg_database(name)


def test_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1


def test_migrations_agree_with_models(empty_database: str) -> None:
    upgrade(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, import_models())
        assert diff == [], f"models and migrations disagree: {diff}"
        tables = set(sa.inspect(engine).get_table_names())
        assert set(import_models().tables) <= tables
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_reports_head(empty_database: str) -> None:
    upgrade(empty_database)
    upgrade(empty_database)
    head = ScriptDirectory.from_config(alembic_config(empty_database)).get_current_head()
    assert current_revision(empty_database) == head


def test_cli_db_upgrade(empty_database: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["db", "upgrade"],
        env={"GATEWAY_DATABASE_URL": empty_database, "GATEWAY_INSTANCE_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    assert current_revision(empty_database) is not None


def test_cli_db_upgrade_unreachable_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["db", "upgrade"],
        env={
            "GATEWAY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "GATEWAY_INSTANCE_DIR": str(tmp_path),
        },
    )
    assert result.exit_code == 1
    assert result.output.startswith("gateway: GATEWAY_DATABASE_URL: cannot reach the database")
    assert len(result.output.strip().splitlines()) == 1
