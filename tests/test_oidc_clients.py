"""The OIDC client registry and `gateway rp ...` (issue 6 item 5, shared/INTERFACE.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from joserfc.jwk import RSAKey

from gateway.app import get_settings
from gateway.cli import main
from gateway.db import get_db
from gateway.idp.oidc import clients as registry
from gateway.idp.oidc.clients import ClientError, OidcClient
from tests.oidc_helpers import RP, add_client


def _cli(app: Flask, *args: str) -> Result:
    return CliRunner().invoke(main, ["rp", *args], env=dict(get_settings(app).environ))


def _rsa_public(**extra: str) -> dict[str, Any]:
    key = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return key.as_dict(private=False, **extra)


def test_add_oidc_prints_client_id_and_secret_stored_hashed(app: Flask) -> None:
    result = _cli(app, "add-oidc", "--client-id", "portal", "--redirect-uri", RP,
                  "--redirect-uri", "https://rp.example.nl/cb2", "--bsn")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["client_id"] == "portal" and len(out["client_secret"]) >= 43
    with get_db(app).begin() as db:
        row = db.get(OidcClient, "portal")
        assert row is not None and row.bsn and not row.public
        assert row.secret_hash and out["client_secret"] not in row.secret_hash
        client = registry.Client.from_row(row, get_settings(app))
    assert client.check_client_secret(out["client_secret"])
    assert not client.check_client_secret(out["client_secret"][:-1])
    assert client.redirect_uris == (RP, "https://rp.example.nl/cb2")


def test_public_client_has_no_secret(app: Flask) -> None:
    result = _cli(app, "add-oidc", "--client-id", "app", "--redirect-uri",
                  "http://127.0.0.1:9000/cb", "--public")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"client_id": "app"}


def test_list_and_remove(app: Flask) -> None:
    add_client(app, "one")
    add_client(app, "two", public=True)
    listed = [json.loads(line) for line in _cli(app, "list").output.splitlines()]
    assert [c["client_id"] for c in listed] == ["one", "two"]
    assert not any("client_secret" in c or "secret_hash" in c for c in listed)
    assert _cli(app, "remove", "one").exit_code == 0
    assert [json.loads(x)["client_id"] for x in _cli(app, "list").output.splitlines()] == ["two"]
    gone = _cli(app, "remove", "one")
    assert gone.exit_code == 1 and gone.output.count("\n") == 1 and "gateway:" in gone.output


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--client-id", "x", "--redirect-uri", "http://rp.example.nl/cb"], "--redirect-uri"),
        (["--client-id", "x", "--redirect-uri", "https://u:p@rp.example.nl/cb"], "--redirect-uri"),
        (["--client-id", "x", "--redirect-uri", "https://rp.example.nl/cb#f"], "--redirect-uri"),
        (["--client-id", "x", "--redirect-uri", "javascript:alert(1)"], "--redirect-uri"),
        (["--client-id", "x", "--redirect-uri", "/relative"], "--redirect-uri"),
        (["--client-id", "x", "--redirect-uri", "https://rp.example.nl/a b"], "--redirect-uri"),
        (["--client-id", "has space", "--redirect-uri", RP], "--client-id"),
        (["--client-id", "x" * 101, "--redirect-uri", RP], "--client-id"),
        (["--client-id", "x", "--redirect-uri", RP, "--public", "--auth-method",
          "client_secret_basic"], "--auth-method"),
        (["--client-id", "x", "--redirect-uri", RP, "--auth-method", "private_key_jwt"],
         "--jwks"),
        (["--client-id", "x", "--redirect-uri", RP, "--jwks", "/nonexistent"], "--jwks"),
    ],
)
def test_bad_registrations_fail_with_one_line(app: Flask, args: list[str], names: str) -> None:
    result = _cli(app, "add-oidc", *args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("gateway: " + names) and result.output.count("\n") == 1


def test_duplicate_client_id(app: Flask) -> None:
    add_client(app, "dup")
    result = _cli(app, "add-oidc", "--client-id", "dup", "--redirect-uri", RP)
    assert result.exit_code == 1 and "already registered" in result.output


def test_missing_redirect_uri_is_a_usage_error(app: Flask) -> None:
    assert _cli(app, "add-oidc", "--client-id", "x").exit_code == 2


def test_keys_from_files(app: Flask, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_rsa_public(kid="k1")]}))
    enc = tmp_path / "enc.json"
    enc.write_text(json.dumps(_rsa_public(use="enc", alg="RSA-OAEP-256")))
    result = _cli(app, "add-oidc", "--client-id", "jwt", "--redirect-uri", RP, "--auth-method",
                  "private_key_jwt", "--jwks", str(jwks), "--encryption-jwk", str(enc))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"client_id": "jwt"}


def test_key_checks(app: Flask) -> None:
    private = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ClientError, match="private key"):
        registry.parse_jwks(json.dumps({"keys": [private.as_dict(private=True)]}))
    with pytest.warns(UserWarning):  # joserfc's own SecurityWarning about the small key
        small = RSAKey.import_key(
            rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ClientError, match="2048"), pytest.warns(UserWarning):
        registry.parse_encryption_jwk(json.dumps(small.as_dict(private=False)))
    with pytest.raises(ClientError, match="use"):
        registry.parse_encryption_jwk(json.dumps(_rsa_public(use="sig")))
    for text in ("not json", "[]", '{"keys": []}', '{"keys": [{"kty": "oct", "k": "AAAA"}]}',
                 "x" * 20_000):
        with pytest.raises(ClientError):
            registry.parse_jwks(text)


def test_loopback_http_allowed_only_for_loopback() -> None:
    for uri in ("http://127.0.0.1/cb", "http://localhost:8080/cb", "http://[::1]:9/cb"):
        assert registry.check_uri(uri, "--redirect-uri") == uri
    for uri in ("http://127.0.0.1.example.com/cb", "http://10.0.0.1/cb"):
        with pytest.raises(ClientError):
            registry.check_uri(uri, "--redirect-uri")
