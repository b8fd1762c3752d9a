"""Test fixtures: an app per test, on SQLite or PostgreSQL, with or without Redis.

Which backends a run uses comes from the environment, set by `./dev test`:
- GATEWAY_TEST_DB=sqlite (default) or postgresql. PostgreSQL runs get a database of their own
  (created on 127.0.0.1:5432 and dropped at the end), so two runs never collide.
- GATEWAY_TEST_REDIS=redis://127.0.0.1:6379/0 to keep shared state in Redis; each test gets
  its own key prefix, removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from gateway import clock
from gateway.app import create_app
from gateway.db import Base, get_db, import_models
from gateway.settings import Settings
from tests.kannel_harness import kannel  # noqa: F401 - the session fixture `kannel`

TEST_DB = os.environ.get("GATEWAY_TEST_DB", "sqlite")
TEST_REDIS = os.environ.get("GATEWAY_TEST_REDIS") or None
PG_ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
RUN_ID = f"{os.getpid()}_{secrets.token_hex(4)}"

if TEST_DB not in ("sqlite", "postgresql"):
    raise pytest.UsageError("GATEWAY_TEST_DB must be sqlite or postgresql")


def pytest_report_header() -> str:
    return f"gateway backends: database={TEST_DB} redis={'yes' if TEST_REDIS else 'no'}"


def create_pg_database(name: str) -> str:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    """The run's own PostgreSQL database, with every table created once."""
    if TEST_DB != "postgresql":
        yield None
        return
    name = f"gwtest_{RUN_ID}"
    url = create_pg_database(name)
    engine = sa.create_engine(url)
    import_models()
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def database_url(tmp_path: Path, pg_url: str | None) -> Iterator[str]:
    if pg_url is None:
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    yield pg_url
    # Empty every table for the next test (the schema stays).
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        if names:
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"gwtest:{RUN_ID}:{secrets.token_hex(4)}:"
    yield prefix
    if TEST_REDIS:
        import redis

        client = redis.Redis.from_url(TEST_REDIS)
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def keys_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signing key set for the run, copied into every test's instance dir: generating an
    RSA key per app would cost about 0.15 s a test. tests/test_keys.py covers first creation."""
    from gateway.keys import KeyStore

    folder = tmp_path_factory.mktemp("keys-template") / "keys"
    KeyStore(folder).ensure()
    return folder


@pytest.fixture
def settings(
    tmp_path: Path, database_url: str, redis_prefix: str, keys_template: Path
) -> Settings:
    instance = tmp_path / "instance"
    instance.mkdir()
    shutil.copytree(keys_template, instance / "keys")  # keeps the 0700/0600 modes
    return Settings.from_env(
        {
            "GATEWAY_INSTANCE_DIR": str(instance),
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_SECRET_KEY": "test-secret-" + "x" * 40,
            **({"GATEWAY_REDIS_URL": TEST_REDIS} if TEST_REDIS else {}),
            "GATEWAY_REDIS_PREFIX": redis_prefix,
        }
    )


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Build an app from the test's settings, with any setting overridden."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        app = create_app(settings.with_overrides(**overrides) if overrides else settings)
        app.config["TESTING"] = True
        if TEST_DB == "sqlite":
            Base.metadata.create_all(get_db(app).engine)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        get_db(app).dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def frozen_clock() -> Iterator[None]:
    with clock.frozen():
        yield


# --- the eIDAS route (tests/eidas_helpers.py) -------------------------------------------------


@pytest.fixture(scope="session")
def sp_keys_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of the gateway's eIDAS SP keys per worker (RSA-3072 takes a while to make)."""
    from tests.eidas_helpers import make_sp_keys_template

    return make_sp_keys_template(tmp_path_factory)


@pytest.fixture(scope="session")
def node_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated eIDAS node's key folder, one per worker."""
    from tests.eidas_helpers import make_node_key_dir

    return make_node_key_dir(tmp_path_factory)


@pytest.fixture
def env(make_app: Callable[..., Flask], settings: Settings, tmp_path: Path,
        sp_keys_template: Path, node_key_dir: Path) -> Any:
    """An app with the eIDAS route on, its test relying party and the simulated node."""
    from tests.eidas_helpers import make_env

    return make_env(make_app, settings, tmp_path, sp_keys_template, node_key_dir)
