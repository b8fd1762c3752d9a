"""Settings: every malformed variable stops start-up with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"GATEWAY_INSTANCE_DIR": str(tmp_path), **extra}


def test_defaults_serve_a_single_machine_demo(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path))
    assert s.issuer == "http://127.0.0.1:8000"
    assert s.database_url == f"sqlite:///{tmp_path / 'gateway.db'}"
    assert s.redis_url is None
    assert s.sms_providers == ("outbox",)
    assert s.sms_outbox == tmp_path / "sms-outbox.jsonl"
    assert s.mail_url == "outbox"
    assert s.mail_outbox == tmp_path / "mail-outbox.jsonl"
    assert s.dev


def test_dev_secret_is_generated_once_with_private_mode(tmp_path: Path) -> None:
    first = Settings.from_env(env(tmp_path)).secret_key
    second = Settings.from_env(env(tmp_path)).secret_key
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret-key").stat().st_mode & 0o777 == 0o600


def test_derived_keys_differ_per_purpose(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, GATEWAY_SECRET_KEY="k" * 40))
    assert s.derive_key("otp") != s.derive_key("audit-chain")
    assert s.derive_key("otp") == s.derive_key("otp")


def test_failover_order_is_kept(tmp_path: Path) -> None:
    s = Settings.from_env(env(tmp_path, GATEWAY_SMS_PROVIDER="kannel, http"))
    assert s.sms_providers == ("kannel", "http")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_ISSUER", "ftp://example.org"),
        ("GATEWAY_ISSUER", "not a url"),
        ("GATEWAY_ISSUER", "https://gw.example/?x=1"),
        ("GATEWAY_ISSUER", "https://user:pw@gw.example"),
        ("GATEWAY_DATABASE_URL", "mysql://root@localhost/db"),
        ("GATEWAY_REDIS_URL", "http://127.0.0.1:6379"),
        ("GATEWAY_POLICIES", "/nonexistent/policies"),
        ("GATEWAY_SECRET_KEY", "too-short"),
        ("GATEWAY_SMS_PROVIDER", "carrier-pigeon"),
        ("GATEWAY_SMS_PROVIDER", "outbox,outbox"),
        ("GATEWAY_SMS_PROVIDER", ""),
        ("GATEWAY_MAIL_URL", "http://mail.example"),
        ("GATEWAY_MAIL_URL", "smtp://mail.example:notaport"),
        ("GATEWAY_ENV", "staging"),
    ],
)
def test_malformed_variable_is_named(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env(tmp_path, **{variable: value}))
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("extra", "variable"),
    [
        ({}, "GATEWAY_ISSUER"),
        ({"GATEWAY_ISSUER": "https://gw.example"}, "GATEWAY_SECRET_KEY"),
        (
            {"GATEWAY_ISSUER": "https://gw.example", "GATEWAY_SECRET_KEY": "s" * 40},
            "GATEWAY_SMS_PROVIDER",
        ),
        (
            {
                "GATEWAY_ISSUER": "https://gw.example",
                "GATEWAY_SECRET_KEY": "s" * 40,
                "GATEWAY_SMS_PROVIDER": "kannel",
            },
            "GATEWAY_MAIL_URL",
        ),
    ],
)
def test_production_refuses_demo_shortcuts(
    tmp_path: Path, extra: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}:"):
        Settings.from_env(env(tmp_path, GATEWAY_ENV="production", **extra))


def test_production_accepts_a_complete_configuration(tmp_path: Path) -> None:
    s = Settings.from_env(
        env(
            tmp_path,
            GATEWAY_ENV="production",
            GATEWAY_ISSUER="https://gw.example/",
            GATEWAY_SECRET_KEY="s" * 40,
            GATEWAY_SMS_PROVIDER="kannel,http",
            GATEWAY_MAIL_URL="smtp://mail.example:587",
        )
    )
    assert s.issuer == "https://gw.example" and s.https and not s.dev
    assert not (tmp_path / "secret-key").exists()


def test_postgres_urls_use_psycopg3() -> None:
    from gateway.settings import normalise_database_url

    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_repr_shows_no_secrets(tmp_path: Path) -> None:
    s = Settings.from_env(
        env(
            tmp_path,
            GATEWAY_SECRET_KEY="super-secret-value-" + "z" * 30,
            GATEWAY_DATABASE_URL="postgresql://gw:dbpass@db.example/gw",
            GATEWAY_REDIS_URL="redis://:redispass@127.0.0.1:6379/0",
            GATEWAY_MAIL_URL="smtp://mailer:mailpass@mail.example:587",
        )
    )
    for text in (repr(s), str(s), f"{s}"):
        for secret in ("super-secret-value", "dbpass", "redispass", "mailpass"):
            assert secret not in text
    assert "mail.example" in repr(s)


@pytest.mark.parametrize("value", ["-1", "abc", "6", "1.5"])
def test_bad_proxy_hops_stop_start_up(settings: Settings, value: str) -> None:
    from gateway.app import create_app

    bad = settings.with_overrides(environ={**settings.environ, "GATEWAY_PROXY_HOPS": value})
    with pytest.raises(SettingsError, match=r"^GATEWAY_PROXY_HOPS:"):
        create_app(bad)


def test_proxy_hops_give_the_client_address(settings: Settings) -> None:
    from flask import request

    from gateway.app import create_app

    def address_seen(hops: str) -> str:
        app = create_app(settings.with_overrides(
            environ={**settings.environ, "GATEWAY_PROXY_HOPS": hops}
        ))

        @app.get("/_addr")
        def _addr() -> str:
            return request.remote_addr or ""

        return app.test_client().get(
            "/_addr", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        ).get_data(as_text=True)

    assert address_seen("0") == "127.0.0.1"  # no proxy trusted: the header is ignored
    assert address_seen("1") == "203.0.113.9"  # only the hop our proxy added is believed
