"""Signing keys: files and modes, kids, JWK Set, rotation, pruning, races, the CLI."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask

from gateway import clock
from gateway.cli import main
from gateway.keys import (
    RETIRE_AFTER,
    KeyStore,
    KeyStoreError,
    _thumbprint,
    get_keys,
)
from gateway.settings import Settings

T0 = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
RSA_PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "oth"}


def b64(n: int, length: int | None = None) -> str:
    raw = n.to_bytes(length or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    with clock.frozen(T0):
        s = KeyStore(tmp_path / "keys")
        s.ensure()
    return s


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_start_creates_files_with_private_modes(store: KeyStore) -> None:
    assert mode(store.folder) == 0o700
    files = sorted(p.name for p in store.folder.iterdir())
    rs, es = store.active("RS256"), store.active("ES256")
    assert files == sorted(
        [".lock", "manifest.json", f"{rs.kid}.key.pem", f"{rs.kid}.crt.pem", f"{es.kid}.key.pem"]
    )
    for path in store.folder.iterdir():
        assert mode(path) == 0o600, path.name
    manifest = json.loads(store.manifest_path.read_text())
    fields = ("kty", "alg", "use", "state", "retire_at")
    described = [tuple(k[f] for f in fields) for k in manifest["keys"]]
    assert described == [
        ("RSA", "RS256", "sig", "active", None),
        ("EC", "ES256", "sig", "active", None),
    ]
    assert {k["kid"] for k in manifest["keys"]} == {rs.kid, es.kid}
    assert datetime.fromisoformat(manifest["keys"][0]["created_at"]) == T0
    assert isinstance(rs.private_key, rsa.RSAPrivateKey) and rs.private_key.key_size == 2048
    assert isinstance(es.private_key, ec.EllipticCurvePrivateKey)
    assert es.private_key.curve.name == "secp256r1"


def test_rsa_key_has_a_certificate_for_saml(store: KeyStore) -> None:
    rs = store.active("RS256")
    assert rs.certificate is not None and rs.cert_path is not None
    assert rs.certificate.not_valid_before_utc < T0 < rs.certificate.not_valid_after_utc
    assert rs.certificate.not_valid_after_utc - T0 > timedelta(days=365)
    certified = rs.certificate.public_key().public_numbers()
    assert certified == rs.private_key.public_key().public_numbers()
    assert store.active("ES256").certificate is None
    assert store.certificates(T0) == [rs.certificate]


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The worked example of RFC 7638 section 3.1.
    n = int.from_bytes(
        base64.urlsafe_b64decode(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
            "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
            "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt"
            "-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDK"
            "gw=="
        ),
        "big",
    )
    key = rsa.RSAPublicNumbers(65537, n).public_key()
    assert _thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_kids_match_an_independent_implementation(store: KeyStore) -> None:
    jwk = pytest.importorskip("joserfc.jwk")
    rs, es = store.active("RS256"), store.active("ES256")
    assert jwk.RSAKey.import_key(rs.key_path.read_bytes()).thumbprint() == rs.kid
    assert jwk.ECKey.import_key(es.key_path.read_bytes()).thumbprint() == es.kid


def test_jwks_has_public_members_only(store: KeyStore) -> None:
    document = store.jwks(T0)
    assert [k["alg"] for k in document["keys"]] == ["RS256", "ES256"]
    rsa_jwk, ec_jwk = document["keys"]
    assert set(rsa_jwk) == {"kty", "kid", "use", "alg", "n", "e"}
    assert set(ec_jwk) == {"kty", "kid", "use", "alg", "crv", "x", "y"}
    assert not (set(rsa_jwk) | set(ec_jwk)) & RSA_PRIVATE
    assert rsa_jwk["e"] == "AQAB" and ec_jwk["crv"] == "P-256"
    text = json.dumps(document)
    rsa_private = store.active("RS256").private_key
    ec_private = store.active("ES256").private_key
    assert isinstance(rsa_private, rsa.RSAPrivateKey)
    assert isinstance(ec_private, ec.EllipticCurvePrivateKey)
    assert b64(rsa_private.private_numbers().d) not in text
    assert b64(ec_private.private_numbers().private_value, 32) not in text
    numbers = rsa_private.public_key().public_numbers()
    assert rsa_jwk["n"] == b64(numbers.n)


def pem_lines(store: KeyStore) -> list[str]:
    lines: list[str] = []
    for alg in ("RS256", "ES256"):
        pem = store.active(alg).key_path.read_text().splitlines()
        lines += [line for line in pem if line and not line.startswith("-----")]
    return lines


def test_private_keys_stay_out_of_repr_and_str(store: KeyStore) -> None:
    shown = " ".join(
        [repr(store.active("RS256")), str(store.active("ES256")), repr(store),
         f"{[store.active('RS256')]}", repr(store.entries())]
    )
    assert "SigningKey(kid=" in shown
    for line in pem_lines(store):
        assert line not in shown
    rsa_private = store.active("RS256").private_key
    assert isinstance(rsa_private, rsa.RSAPrivateKey)
    assert str(rsa_private.private_numbers().d) not in shown


def test_a_damaged_key_file_is_named_but_not_quoted(store: KeyStore, tmp_path: Path) -> None:
    rs = store.active("RS256")
    original = rs.key_path.read_text()
    lines = original.splitlines()
    # Keep most of the base64 but break the structure, as a half-copied file would.
    rs.key_path.write_text("\n".join([*lines[:10], "!!!!", *lines[10:]]) + "\n")
    fresh = KeyStore(store.folder)
    with pytest.raises(KeyStoreError) as info:
        fresh.active("RS256")
    message = str(info.value)
    assert str(rs.key_path) in message and message.startswith("GATEWAY_INSTANCE_DIR:")
    for line in lines[1:-1]:
        assert line not in message
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert "\n" not in message


def test_a_key_swapped_for_another_is_refused(store: KeyStore) -> None:
    es = store.active("ES256")
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    es.key_path.write_bytes(other)
    with pytest.raises(KeyStoreError, match="does not hold the key the manifest names"):
        KeyStore(store.folder).ensure()


def test_a_key_file_readable_by_others_is_refused(store: KeyStore) -> None:
    os.chmod(store.active("RS256").key_path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        KeyStore(store.folder).ensure()


def test_a_keys_folder_open_to_others_is_refused(store: KeyStore) -> None:
    os.chmod(store.folder, 0o755)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        KeyStore(store.folder).ensure()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m["keys"][0].update(kid="../../etc/passwd-xxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        lambda m: m["keys"][0].update(state="retiring"),
        lambda m: m["keys"][1].update(alg="none"),
        lambda m: m["keys"][1].update(created_at="2030-03-01T09:00:00"),
        lambda m: m.update(version=2),
        lambda m: m.update(keys={"a": 1}),
        lambda m: m["keys"].append(dict(m["keys"][0])),
    ],
)
def test_a_tampered_manifest_stops_start_up(store: KeyStore, mutate: object) -> None:
    manifest = json.loads(store.manifest_path.read_text())
    mutate(manifest)  # type: ignore[operator]
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(KeyStoreError, match=r"manifest\.json is malformed"):
        KeyStore(store.folder).ensure()


def test_a_manifest_that_is_not_json_stops_start_up(store: KeyStore) -> None:
    store.manifest_path.write_text("{not json")
    with pytest.raises(KeyStoreError, match="not valid JSON"):
        KeyStore(store.folder).ensure()


def test_rotate_keeps_the_old_keys_published_until_they_retire(store: KeyStore) -> None:
    old = {alg: store.active(alg).kid for alg in ("RS256", "ES256")}
    t1 = T0 + timedelta(days=30)
    with clock.frozen(t1):
        result = store.rotate(clock.now())
    new = {alg: store.active(alg).kid for alg in ("RS256", "ES256")}
    assert set(new.values()).isdisjoint(old.values())
    assert {i.kid for i in result.created} == set(new.values())
    retiring = {i.kid: i.retire_at for i in result.retiring}
    assert retiring == dict.fromkeys(old.values(), t1 + RETIRE_AFTER)
    assert result.pruned == ()

    just_before = t1 + RETIRE_AFTER - timedelta(seconds=1)
    published = [k["kid"] for k in store.published(just_before)]
    # Active keys first, so a client that picks the first matching key picks the new one.
    assert published[:2] == [new["RS256"], new["ES256"]]
    assert set(published[2:]) == set(old.values())
    assert len(store.certificates(just_before)) == 2
    assert [k["kid"] for k in store.published(t1 + RETIRE_AFTER)] == [new["RS256"], new["ES256"]]

    # Until pruned, the old private keys are still on disk; the manifest still names them.
    assert store.prune(just_before) == ()
    assert all((store.folder / f"{kid}.key.pem").exists() for kid in old.values())
    pruned = store.prune(t1 + RETIRE_AFTER)
    assert set(pruned) == set(old.values())
    for kid in old.values():
        assert not (store.folder / f"{kid}.key.pem").exists()
    manifest = json.loads(store.manifest_path.read_text())
    assert {k["kid"] for k in manifest["keys"]} == set(new.values())
    assert {r["kid"] for r in manifest["retired"]} == set(old.values())
    assert all("d" not in r["public_jwk"] and r["public_jwk"]["kid"] == r["kid"]
               for r in manifest["retired"])
    assert KeyStore(store.folder).jwks(just_before) == store.jwks(just_before)


def test_rotate_prunes_keys_whose_time_has_come(store: KeyStore) -> None:
    first = store.active("RS256").kid
    store.rotate(T0 + timedelta(days=1))
    second = store.active("RS256").kid
    result = store.rotate(T0 + timedelta(days=1) + RETIRE_AFTER)
    assert first in result.pruned
    assert second in {i.kid for i in result.retiring}
    assert len([k for k in store.entries() if k.state == "active"]) == 2


def test_leftovers_of_a_crashed_writer_are_swept(store: KeyStore) -> None:
    stray = store.folder / ("A" * 43 + ".key.pem")
    stray.write_bytes(store.active("ES256").key_path.read_bytes())
    tmp = store.folder / ".manifest.json.0123.tmp"
    tmp.write_text("{}")
    assert store.prune(T0) == ()
    assert not stray.exists() and not tmp.exists()
    assert store.active("ES256").key_path.exists()


def test_another_process_rotating_is_seen_on_the_next_use(store: KeyStore) -> None:
    other = KeyStore(store.folder)
    before = other.jwks(T0)
    assert before == store.jwks(T0)
    store.rotate(T0 + timedelta(hours=1))
    after = other.jwks(T0 + timedelta(hours=1))
    assert after != before
    assert after == store.jwks(T0 + timedelta(hours=1))
    assert other.active("ES256").kid == store.active("ES256").kid
    store.rotate(T0 + timedelta(hours=2))
    assert other.active("RS256").kid == store.active("RS256").kid


def test_threads_starting_together_make_one_key_set(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    barrier = threading.Barrier(6)
    kids: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            s = KeyStore(folder)
            barrier.wait()
            s.ensure()
            kids.append((s.active("RS256").kid, s.active("ES256").kid))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(kids)) == 1
    assert len(list(folder.glob("*.key.pem"))) == 2
    assert not list(folder.glob("*.tmp"))


def _start_worker(folder: str, go: object, out: object) -> None:
    go.wait()  # type: ignore[attr-defined]
    s = KeyStore(Path(folder))
    s.ensure()
    out.put((s.active("RS256").kid, s.active("ES256").kid))  # type: ignore[attr-defined]


def test_processes_starting_together_make_one_key_set(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    folder = tmp_path / "keys"
    workers = [ctx.Process(target=_start_worker, args=(str(folder), go, out)) for _ in range(4)]
    for w in workers:
        w.start()
    go.set()
    results = {out.get(timeout=30) for _ in workers}
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert len(results) == 1
    assert len(list(folder.glob("*.key.pem"))) == 2


def test_the_app_loads_and_serves_the_keys(app: Flask, settings: Settings) -> None:
    keys = get_keys(app)
    assert keys.folder == settings.instance_dir / "keys"
    assert len(keys.jwks()["keys"]) == 2
    with app.app_context():
        assert get_keys() is keys


def test_the_app_creates_the_keys_on_first_start(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh-instance"
    app = make_app(instance_dir=fresh)
    assert (fresh / "keys" / "manifest.json").exists()
    assert {k["alg"] for k in get_keys(app).jwks()["keys"]} == {"RS256", "ES256"}


def test_the_app_refuses_to_start_on_a_damaged_keys_folder(
    make_app: Callable[..., Flask], settings: Settings
) -> None:
    (settings.instance_dir / "keys" / "manifest.json").write_text("[]")
    with pytest.raises(KeyStoreError, match=r"GATEWAY_INSTANCE_DIR: .*manifest\.json is malformed"):
        make_app()


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
    }


def test_cli_rotate_prints_new_kids_and_retirement(settings: Settings) -> None:
    store = KeyStore.for_settings(settings)
    store.ensure()
    old = store.active("RS256").kid
    with clock.frozen(T0):
        result = CliRunner().invoke(main, ["keys", "rotate"], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    new = store.active("RS256").kid
    assert new != old
    assert f"new RS256 key {new} (active)" in result.output
    assert f"RS256 key {old} retires at {(T0 + RETIRE_AFTER).isoformat()}" in result.output
    assert "BEGIN" not in result.output


def test_cli_rotate_fails_in_one_line_when_the_folder_is_unusable(
    settings: Settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {**cli_env(settings), "GATEWAY_INSTANCE_DIR": str(blocker / "instance")}
    result = CliRunner().invoke(main, ["keys", "rotate"], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: GATEWAY_INSTANCE_DIR: cannot create")
    assert "Traceback" not in result.output
