"""Settings read from the environment and checked once at start-up.

The variables are part of the public interface (shared/INTERFACE.md, "Configuration"); a value
that is malformed stops start-up with a `SettingsError` whose message names the variable.
Subsystems with settings of their own (SMS providers, mail) parse them from `Settings.environ`
in their `init_app` and raise `SettingsError` the same way.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: The repository's own policy folder, the default for GATEWAY_POLICIES.
DEFAULT_POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"

SMS_PROVIDERS = ("outbox", "kannel", "http")

#: A secret shorter than this is refused: it keys the HMACs of codes and the audit chain.
MIN_SECRET_BYTES = 32


@functools.lru_cache(maxsize=256)
def _derive_key(secret_key: bytes, purpose: str) -> bytes:
    # Cached: several keys are derived on every request (codes, limits, sessions), and the
    # result depends on these two values only. Purposes are names in code, so few entries.
    return hmac.new(secret_key, b"abroad-gateway/" + purpose.encode(), hashlib.sha256).digest()


class SettingsError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    issuer: str = "http://127.0.0.1:8000"
    instance_dir: Path = Path("instance")
    database_url: str = ""
    redis_url: str | None = None
    #: Prefix of every key this gateway writes to Redis; lets test runs share one server.
    redis_prefix: str = "gw:"
    policies_dir: Path = DEFAULT_POLICIES_DIR
    secret_key: bytes = b""
    #: Providers in failover order (GATEWAY_SMS_PROVIDER may list several, comma-separated).
    sms_providers: tuple[str, ...] = ("outbox",)
    sms_outbox: Path = Path("instance/sms-outbox.jsonl")
    mail_url: str = "outbox"
    mail_outbox: Path = Path("instance/mail-outbox.jsonl")
    #: "dev" (the default: demo and development) or "production" (GATEWAY_ENV).
    env: str = "dev"
    #: Bearer token a scraper must send for /metrics (GATEWAY_METRICS_TOKEN). Unset: /metrics
    #: is open in dev and absent (404) in production.
    metrics_token: str | None = field(default=None, repr=False)
    #: The raw environment, for subsystems that read variables of their own.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        # Never print secrets: the key itself, and passwords that URLs may carry.
        return (
            f"Settings(env={self.env!r}, issuer={self.issuer!r}, "
            f"instance_dir={str(self.instance_dir)!r}, "
            f"database_url={_redact(self.database_url)!r}, redis_url={_redact(self.redis_url)!r}, "
            f"sms_providers={self.sms_providers!r}, mail_url={_redact(self.mail_url)!r})"
        )

    __str__ = __repr__

    @property
    def dev(self) -> bool:
        return self.env == "dev"

    @property
    def https(self) -> bool:
        return self.issuer.startswith("https://")

    @property
    def issuer_host(self) -> str:
        """The host (with port when not the default) of the issuer, for WebOTP lines."""
        return urlsplit(self.issuer).netloc

    def derive_key(self, purpose: str) -> bytes:
        """A key for one purpose, derived from GATEWAY_SECRET_KEY, so that purposes never share
        a key (a code HMAC can never be replayed as an audit hash, for example)."""
        return _derive_key(self.secret_key, purpose)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        mode = env.get("GATEWAY_ENV", "dev").strip() or "dev"
        if mode not in ("dev", "production"):
            raise SettingsError("GATEWAY_ENV: must be 'dev' or 'production'")

        issuer = _issuer(env.get("GATEWAY_ISSUER", "http://127.0.0.1:8000"))
        if mode == "production" and not issuer.startswith("https://"):
            raise SettingsError("GATEWAY_ISSUER: must be an https:// URL in production")

        instance_dir = Path(env.get("GATEWAY_INSTANCE_DIR", "instance") or "instance").absolute()
        database_url = env.get("GATEWAY_DATABASE_URL") or f"sqlite:///{instance_dir / 'gateway.db'}"
        _check_database_url(database_url)

        redis_url = env.get("GATEWAY_REDIS_URL") or None
        if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError("GATEWAY_REDIS_URL: must be a redis://, rediss:// or unix:// URL")

        policies_dir = Path(env.get("GATEWAY_POLICIES") or DEFAULT_POLICIES_DIR)
        if not policies_dir.is_dir():
            raise SettingsError(f"GATEWAY_POLICIES: {policies_dir} is not a folder")

        secret_key = _secret_key(env.get("GATEWAY_SECRET_KEY"), mode, instance_dir)

        providers = tuple(p.strip() for p in env.get("GATEWAY_SMS_PROVIDER", "outbox").split(","))
        if not providers or any(p not in SMS_PROVIDERS for p in providers):
            raise SettingsError(
                "GATEWAY_SMS_PROVIDER: must be one or more of "
                + ", ".join(SMS_PROVIDERS)
                + " (comma-separated, in failover order)"
            )
        if len(set(providers)) != len(providers):
            raise SettingsError("GATEWAY_SMS_PROVIDER: names a provider twice")
        if mode == "production" and "outbox" in providers:
            raise SettingsError("GATEWAY_SMS_PROVIDER: the outbox provider is for development only")

        mail_url = env.get("GATEWAY_MAIL_URL", "outbox").strip() or "outbox"
        if mail_url != "outbox":
            parts = urlsplit(mail_url)
            if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
                raise SettingsError("GATEWAY_MAIL_URL: must be 'outbox' or smtp://host:port")
            try:
                parts.port  # noqa: B018 - raises ValueError on a malformed port
            except ValueError as exc:
                raise SettingsError("GATEWAY_MAIL_URL: the port is not a number") from exc
        elif mode == "production":
            raise SettingsError("GATEWAY_MAIL_URL: the outbox is for development only")

        metrics_token = env.get("GATEWAY_METRICS_TOKEN") or None
        if metrics_token is not None and not _METRICS_TOKEN.match(metrics_token):
            raise SettingsError(
                "GATEWAY_METRICS_TOKEN: at least 32 characters, letters, digits and -._~+/= only"
            )

        return cls(
            issuer=issuer,
            instance_dir=instance_dir,
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix=env.get("GATEWAY_REDIS_PREFIX", "gw:") or "gw:",
            policies_dir=policies_dir,
            secret_key=secret_key,
            sms_providers=providers,
            sms_outbox=Path(env.get("GATEWAY_SMS_OUTBOX") or instance_dir / "sms-outbox.jsonl"),
            mail_url=mail_url,
            mail_outbox=Path(env.get("GATEWAY_MAIL_OUTBOX") or instance_dir / "mail-outbox.jsonl"),
            env=mode,
            metrics_token=metrics_token,
            environ=env,
        )


#: A bearer token (RFC 6750 b64token syntax) long enough not to be guessed.
_METRICS_TOKEN = re.compile(r"\A[A-Za-z0-9\-._~+/]{32,512}=*\Z")


def is_loopback_host(host: str | None) -> bool:
    """`localhost` or a loopback address (IPv6 in brackets or not): where the rules for the
    network (https, production mode) need not hold."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _redact(url: str | None) -> str | None:
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def _issuer(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("GATEWAY_ISSUER: must be an http:// or https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError("GATEWAY_ISSUER: must not carry a query, fragment or user")
    return value


def _check_database_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        return
    if scheme in ("postgresql", "postgresql+psycopg", "postgres"):
        return
    raise SettingsError("GATEWAY_DATABASE_URL: must be a sqlite:/// or postgresql:// URL")


def normalise_database_url(url: str) -> str:
    """SQLAlchemy URL with the psycopg 3 driver for PostgreSQL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _secret_key(value: str | None, mode: str, instance_dir: Path) -> bytes:
    if value:
        raw = value.encode()
        if len(raw) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"GATEWAY_SECRET_KEY: must be at least {MIN_SECRET_BYTES} characters"
            )
        return raw
    if mode != "dev":
        raise SettingsError("GATEWAY_SECRET_KEY: required in production")
    # Development: one random key, generated once and kept in the instance folder (0600).
    path = instance_dir / "secret-key"
    try:
        instance_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()
    except FileExistsError:
        return path.read_text().strip().encode()
    except OSError as exc:
        raise SettingsError(
            f"GATEWAY_INSTANCE_DIR: cannot keep the secret key there ({exc.strerror})"
        ) from exc
