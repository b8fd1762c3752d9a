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
    PUBLISH_BEFORE_SIGN,
    RETIRE_AFTER,
    KeyStore,
    KeyStoreError,
    _thumbprint,
    get_keys,
)
from gateway.settings import Settings

T0 = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
ALGS = ("RS256", "ES256")
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
    fields = ("kty", "alg", "use", "state", "retire_at", "activate_at")
    described = [tuple(k[f] for f in fields) for k in manifest["keys"]]
    assert described == [
        ("RSA", "RS256", "sig", "active", None, None),
        ("EC", "ES256", "sig", "active", None, None),
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
    old = {alg: store.active(alg, T0).kid for alg in ALGS}
    t1 = T0 + timedelta(days=30)
    with clock.frozen(t1):
        result = store.rotate(clock.now())
        clock.advance(PUBLISH_BEFORE_SIGN)
        new = {alg: store.active(alg).kid for alg in ALGS}
    activated = t1 + PUBLISH_BEFORE_SIGN
    assert set(new.values()).isdisjoint(old.values())
    assert {i.kid for i in result.created} == set(new.values())
    retiring = {i.kid: i.retire_at for i in result.retiring}
    assert retiring == dict.fromkeys(old.values(), activated + RETIRE_AFTER)
    assert result.pruned == ()

    t1 = activated  # from here on, as before publish-before-sign: the new keys sign from t1
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
    first = store.active("RS256", T0).kid
    with clock.frozen(T0 + timedelta(days=1)):
        store.rotate(clock.now())
        clock.advance(PUBLISH_BEFORE_SIGN)
        second = store.active("RS256").kid
        clock.advance(RETIRE_AFTER)
        result = store.rotate(clock.now())
        assert first in result.pruned
        assert second in {i.kid for i in result.retiring}
        assert len([k for k in store.entries() if k.state == "active"]) == 2
        assert store.active("RS256").kid == second  # the third set waits its turn
        assert len([k for k in store.entries() if k.state == "next"]) == 2


def kids(store: KeyStore, state: str, now: datetime | None = None) -> dict[str, str]:
    return {k.alg: k.kid for k in store.entries(now) if k.state == state}


def test_rotate_publishes_the_new_set_before_it_signs(store: KeyStore) -> None:
    old = {alg: store.active(alg, T0).kid for alg in ALGS}
    t1 = T0 + timedelta(days=30)
    activated = t1 + PUBLISH_BEFORE_SIGN
    with clock.frozen(t1):
        result = store.rotate(clock.now())
        new = kids(store, "next")
        assert set(new.values()) == {i.kid for i in result.created}
        assert set(new.values()).isdisjoint(old.values())
        assert {(i.state, i.activate_at) for i in result.created} == {("next", activated)}
        assert {(i.kid, i.retire_at) for i in result.retiring} == {
            (kid, activated + RETIRE_AFTER) for kid in old.values()
        }
        # Published at once, after the active keys; the old keys still sign.
        assert [k["kid"] for k in store.published()] == [
            old["RS256"], old["ES256"], new["RS256"], new["ES256"]
        ]
        assert [c.public_bytes(serialization.Encoding.PEM) for c in store.certificates()] == [
            (store.folder / f"{kid}.crt.pem").read_bytes() for kid in (old["RS256"], new["RS256"])
        ]
        assert {alg: store.active(alg).kid for alg in ALGS} == old
        clock.advance(PUBLISH_BEFORE_SIGN - timedelta(microseconds=1))
        assert {alg: store.active(alg).kid for alg in ALGS} == old
        assert kids(store, "next") == new
        written = store.manifest_path.read_bytes()

        # Exactly at activate_at the new keys sign, in this process and any other, without a
        # writer: the manifest still says `next`.
        clock.advance(timedelta(microseconds=1))
        assert clock.now() == activated
        assert {alg: store.active(alg).kid for alg in ALGS} == new
        assert {alg: KeyStore(store.folder).active(alg).kid for alg in ALGS} == new
        assert store.manifest_path.read_bytes() == written
        assert kids(store, "next") == {}
        assert {k.kid: k.retire_at for k in store.entries() if k.state == "retiring"} == (
            dict.fromkeys(old.values(), activated + RETIRE_AFTER)
        )
        published = [k["kid"] for k in store.published()]
        assert published[:2] == [new["RS256"], new["ES256"]]
        assert set(published[2:]) == set(old.values())

        # A writer records the effective states.
        assert store.prune(clock.now()) == ()
        manifest = json.loads(store.manifest_path.read_text())
        states = {k["kid"]: (k["state"], k["retire_at"], k["activate_at"])
                  for k in manifest["keys"]}
        retire_at = (activated + RETIRE_AFTER).isoformat()
        assert states == {
            **dict.fromkeys(new.values(), ("active", None, None)),
            **dict.fromkeys(old.values(), ("retiring", retire_at, None)),
        }
        assert {alg: store.active(alg).kid for alg in ALGS} == new

        clock.advance(RETIRE_AFTER)
        assert [k["kid"] for k in store.published()] == [new["RS256"], new["ES256"]]
        assert set(store.prune(clock.now())) == set(old.values())
        for kid in old.values():
            assert not (store.folder / f"{kid}.key.pem").exists()


def test_a_writer_past_activation_prunes_in_one_go(store: KeyStore) -> None:
    old = {alg: store.active(alg, T0).kid for alg in ALGS}
    store.rotate(T0)
    new = kids(store, "next", T0)
    # Nobody touched the folder for longer than the publication and the retirement together.
    late = T0 + PUBLISH_BEFORE_SIGN + RETIRE_AFTER
    assert set(store.prune(late)) == set(old.values())
    assert kids(store, "active", late) == new
    manifest = json.loads(store.manifest_path.read_text())
    assert [(k["kid"], k["state"]) for k in manifest["keys"]] == [
        (new["RS256"], "active"), (new["ES256"], "active")
    ]


def test_rotate_now_makes_the_new_set_sign_at_once(store: KeyStore) -> None:
    old = {alg: store.active(alg, T0).kid for alg in ALGS}
    t1 = T0 + timedelta(days=30)
    with clock.frozen(t1):
        result = store.rotate(clock.now(), publish_for=timedelta(0))
        new = {alg: store.active(alg).kid for alg in ALGS}
        assert set(new.values()).isdisjoint(old.values())
        assert {(i.kid, i.state, i.activate_at) for i in result.created} == {
            (kid, "active", None) for kid in new.values()
        }
        assert {(i.kid, i.retire_at) for i in result.retiring} == {
            (kid, t1 + RETIRE_AFTER) for kid in old.values()
        }
        assert kids(store, "next") == {}
        published = [k["kid"] for k in store.published()]
        assert published[:2] == [new["RS256"], new["ES256"]]
        assert set(published[2:]) == set(old.values())


def test_a_second_rotation_while_a_set_waits(store: KeyStore) -> None:
    old = {alg: store.active(alg, T0).kid for alg in ALGS}
    with clock.frozen(T0):
        store.rotate(clock.now())
        waiting = kids(store, "next")
        written = store.manifest_path.read_bytes()
        files = sorted(p.name for p in store.folder.iterdir())
        clock.advance(timedelta(days=1))
        activate_at = (T0 + PUBLISH_BEFORE_SIGN).isoformat()
        with pytest.raises(KeyStoreError) as info:
            store.rotate(clock.now())
        assert str(info.value) == (
            f"a new key set is already waiting to become active at {activate_at}; "
            "use --now to activate a new set at once"
        )
        assert store.manifest_path.read_bytes() == written
        assert sorted(p.name for p in store.folder.iterdir()) == files

        # --now replaces the waiting set, which never signed: its private keys go.
        t2 = clock.now()
        result = store.rotate(t2, publish_for=timedelta(0))
        assert set(result.discarded) == set(waiting.values())
        new = {alg: store.active(alg).kid for alg in ALGS}
        assert set(new.values()).isdisjoint(set(waiting.values()) | set(old.values()))
        assert {(i.kid, i.retire_at) for i in result.retiring} == {
            (kid, t2 + RETIRE_AFTER) for kid in old.values()
        }
        for kid in waiting.values():
            assert not (store.folder / f"{kid}.key.pem").exists()
        published = {k["kid"] for k in store.published()}
        assert published == set(new.values()) | set(old.values())
        manifest = json.loads(store.manifest_path.read_text())
        assert {r["kid"] for r in manifest["retired"]} == set(waiting.values())
        assert all("d" not in r["public_jwk"] for r in manifest["retired"])
        # Long after that set would have signed, the --now set still does.
        clock.advance(PUBLISH_BEFORE_SIGN)
        assert {alg: store.active(alg).kid for alg in ALGS} == new


def test_a_rotation_after_activation_is_allowed(store: KeyStore) -> None:
    with clock.frozen(T0):
        store.rotate(clock.now())
        second = kids(store, "next")
        clock.advance(PUBLISH_BEFORE_SIGN)
        result = store.rotate(clock.now())
        assert {i.kid for i in result.retiring} >= set(second.values())
        assert kids(store, "active") == second
        assert len(kids(store, "next")) == 2


def test_two_stores_agree_on_the_switch_without_rereading(store: KeyStore) -> None:
    other = KeyStore(store.folder)
    with clock.frozen(T0):
        store.rotate(clock.now())
        new = kids(store, "next")
        before = {alg: other.active(alg).kid for alg in ALGS}
        assert before == {alg: store.active(alg).kid for alg in ALGS}
        assert other.jwks() == store.jwks()
        snapshot = other._snapshot
        clock.advance(PUBLISH_BEFORE_SIGN)
        for s in (store, other):
            assert {alg: s.active(alg).kid for alg in ALGS} == new
        assert other.jwks() == store.jwks()
        assert other._snapshot is snapshot  # the clock moved, the manifest did not


def test_a_manifest_without_activate_at_still_loads(store: KeyStore) -> None:
    manifest = json.loads(store.manifest_path.read_text())
    for key in manifest["keys"]:
        del key["activate_at"]
    store.manifest_path.write_text(json.dumps(manifest))
    fresh = KeyStore(store.folder)
    assert fresh.jwks(T0) == store.jwks(T0)
    with clock.frozen(T0 + timedelta(days=1)):
        fresh.rotate(clock.now())
    assert len(fresh.published(T0 + timedelta(days=1))) == 4


@pytest.fixture
def rotated(store: KeyStore) -> KeyStore:
    store.rotate(T0 + timedelta(hours=1))
    return store


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m["keys"][2].update(activate_at=None),
        lambda m: m["keys"][3].pop("activate_at"),
        lambda m: m["keys"][0].update(activate_at=m["keys"][2]["activate_at"]),
        lambda m: m["keys"][2].update(retire_at=m["keys"][2]["activate_at"]),
        lambda m: m["keys"][2].update(activate_at="2030-03-03T10:00:00"),
        lambda m: m["keys"][2].update(state="pending"),
        lambda m: m["keys"].append({**m["keys"][2], "kid": "B" * 43}),
        lambda m: m["keys"][0].update(state="next", activate_at=m["keys"][2]["activate_at"]),
    ],
    ids=["next-without-activate_at", "next-missing-activate_at", "active-with-activate_at",
         "next-with-retire_at", "naive-activate_at", "unknown-state", "two-next-per-alg",
         "no-active-key"],
)
def test_a_tampered_next_key_stops_start_up(rotated: KeyStore, mutate: object) -> None:
    manifest = json.loads(rotated.manifest_path.read_text())
    assert [k["state"] for k in manifest["keys"]] == ["active", "active", "next", "next"]
    mutate(manifest)  # type: ignore[operator]
    rotated.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(KeyStoreError, match=r"manifest\.json is malformed"):
        KeyStore(rotated.folder).ensure()


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
    with clock.frozen(T0 + timedelta(hours=1)):
        store.rotate(clock.now())
        after = other.jwks()
        assert after != before
        assert after == store.jwks()
        assert other.active("ES256").kid == store.active("ES256").kid
        clock.advance(PUBLISH_BEFORE_SIGN)
        assert other.active("ES256").kid == store.active("ES256").kid
        store.rotate(clock.now())
        assert other.active("RS256").kid == store.active("RS256").kid
        assert other.jwks() == store.jwks()


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


def test_cli_rotate_now_prints_new_kids_and_retirement(settings: Settings) -> None:
    store = KeyStore.for_settings(settings)
    store.ensure()
    old = store.active("RS256").kid
    with clock.frozen(T0):
        result = CliRunner().invoke(main, ["keys", "rotate", "--now"], env=cli_env(settings))
        assert result.exit_code == 0, result.output
        new = store.active("RS256").kid
    assert new != old
    assert f"new RS256 key {new} (active)" in result.output
    assert f"RS256 key {old} retires at {(T0 + RETIRE_AFTER).isoformat()}" in result.output
    assert "BEGIN" not in result.output


def test_cli_rotate_publishes_first_and_refuses_a_second_rotation(settings: Settings) -> None:
    store = KeyStore.for_settings(settings)
    store.ensure()
    old = store.active("RS256").kid
    activated = T0 + PUBLISH_BEFORE_SIGN
    with clock.frozen(T0):
        result = CliRunner().invoke(main, ["keys", "rotate"], env=cli_env(settings))
        assert result.exit_code == 0, result.output
        assert store.active("RS256").kid == old
        (new,) = [k.kid for k in store.entries() if k.state == "next" and k.alg == "RS256"]
        assert (f"new RS256 key {new} (published now, signs from {activated.isoformat()})"
                in result.output)
        assert (f"RS256 key {old} retires at {(activated + RETIRE_AFTER).isoformat()}"
                in result.output)
        assert "BEGIN" not in result.output

        again = CliRunner().invoke(main, ["keys", "rotate"], env=cli_env(settings))
        assert again.exit_code == 1
        lines = again.output.strip().splitlines()
        assert lines == [
            f"gateway: a new key set is already waiting to become active at "
            f"{activated.isoformat()}; use --now to activate a new set at once"
        ]
        assert store.active("RS256").kid == old
    with clock.frozen(activated):
        assert store.active("RS256").kid == new


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
