"""Signing keys: created once, published as a JWK Set, rotated without breaking what was signed.

Two keys are active at any time: RSA-2048 for RS256 (OpenID Connect Core 1.0 section 10.1,
whose default is RS256) and for SAML signing and encryption, with a self-signed X.509
certificate for SAML metadata; and EC P-256 for ES256 (RFC 7518 section 3.4). Each key's id is
its RFC 7638 JWK thumbprint, so a kid always names exactly one public key.

Layout of `<instance_dir>/keys/` (folder 0700, every file 0600):

- `manifest.json`: the list of keys, each with kid, kty, alg, use, created_at, state
  (`next`, `active` or `retiring`), retire_at and activate_at; pruned keys move to `retired`
  with their public JWK (revoked keys also with `revoked_at`);
- `<kid>.key.pem`: the private key (PKCS#8); `<kid>.crt.pem`: the RSA key's certificate;
- `.lock`: the flock(2) that serialises every writer (and readers, against a prune).

Several workers start at once and several instances may share the folder, so every change is
made under an exclusive lock and lands by write-then-rename: a reader sees the old manifest or
the new one, never half of one, and two workers starting together never create two key sets.
Each KeyStore re-reads the manifest when its inode, size or mtime changes (one stat(2) per
use), so a rotation by one process is published by all of them on their next request.

Rotation is publish-before-sign: `rotate` adds the new set as `next`, published (JWK Set,
SAML metadata) at once but signing only from its activate_at, PUBLISH_BEFORE_SIGN later, so
relying parties that cache our keys have fetched the new ones before they see a signature by
them. Nothing has to run at activate_at: every reader computes the effective states from the
manifest and the clock (a `next` key past its activate_at is active, the key it replaces
retiring until activate_at + RETIRE_AFTER), so all processes switch at the same instant (hosts
need synchronised clocks, as token expiry does anyway).
Writers (rotate, prune) first write those effective states into the manifest. `rotate
--now` (`publish_for=0`, for a suspected compromise) makes the new set active at once.
`revoke` (a leaked key) takes one key out of publication at once instead of letting it retire,
deletes its private key, and if it was signing makes a new key of its alg sign at once.
The manifest format stays version 1: `activate_at` is optional, so older manifests still
parse (a reader that predates `next` refuses a manifest holding one, rather than guess).

Private key material never leaves this module in text: `SigningKey`'s repr names the kid only,
and errors name the file, never its contents.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import click
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from flask import Flask, current_app

from gateway import clock
from gateway.settings import Settings, SettingsError

#: How long a replaced key stays published after `rotate`. It must outlast everything signed
#: with it: ID tokens and SAML assertions live minutes to an hour, relying parties cache a JWK
#: Set and SAML metadata for up to a day, and an operator may only notice a problem after a
#: weekend. Seven days covers all of that with room to spare; keeping an old *public* key
#: published longer costs nothing but a slightly larger JWK Set.
RETIRE_AFTER = timedelta(days=7)

#: How long a new key set is published before it signs (`rotate` without `--now`). Relying
#: parties fetch our JWK Set and SAML metadata ahead of need and verify with the cached copy:
#: OIDC libraries keep a JWK Set for hours (some up to a day, whatever our Cache-Control
#: says), SAML SPs refresh metadata about daily. Two days covers one daily refresh that
#: fails or is skipped, plus the next one; longer would only delay a planned rotation. SPs
#: that load metadata by hand must be told before the new set signs (docs/operators.md).
PUBLISH_BEFORE_SIGN = timedelta(days=2)

#: Validity of the RSA key's self-signed certificate. SAML metadata uses it as a key container
#: (most SPs ignore its dates, some do check them), so it must outlive the key's use: keys are
#: meant to be rotated at least once a year, and two years leaves a year of slack before an SP
#: that checks dates would refuse it, without creating a certificate that outlives the
#: software it was made for.
CERT_VALIDITY = timedelta(days=730)
#: Back-dating of the certificate's notBefore, for relying parties whose clock runs behind.
CERT_BACKDATE = timedelta(hours=1)

RSA_BITS = 2048
ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
_KTY = {"RS256": "RSA", "ES256": "EC"}

MANIFEST = "manifest.json"
LOCK = ".lock"
MANIFEST_VERSION = 1

#: A kid is an unpadded base64url SHA-256 (43 characters). Checked before a kid read from the
#: manifest becomes part of a file name, so a tampered manifest cannot point outside the folder.
_KID = re.compile(r"[A-Za-z0-9_-]{43}")

KeyState = Literal["next", "active", "retiring"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyStoreError(SettingsError):
    """The keys folder cannot be used. The message names a file or folder, never key material.

    A `SettingsError`, so start-up and the command line report it in their one-line form.
    """


@dataclass(frozen=True)
class KeyInfo:
    """One manifest entry: everything about a key except the key itself."""

    kid: str
    kty: str
    alg: str
    use: str
    created_at: datetime
    state: KeyState
    retire_at: datetime | None
    #: For a `next` key only: when it starts to sign.
    activate_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "kty": self.kty,
            "alg": self.alg,
            "use": self.use,
            "created_at": _iso(self.created_at),
            "state": self.state,
            "retire_at": _iso(self.retire_at) if self.retire_at else None,
            "activate_at": _iso(self.activate_at) if self.activate_at else None,
        }


@dataclass(frozen=True, repr=False, eq=False)
class SigningKey:
    """A private key to sign with, its kid and algorithm, and for RSA its certificate.

    `key_path`/`cert_path` serve libraries that want files (pysaml2's `key_file`/`cert_file`).
    """

    kid: str
    alg: str
    private_key: PrivateKey
    key_path: Path
    certificate: x509.Certificate | None = None
    cert_path: Path | None = None

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    __str__ = __repr__

    def public_jwk(self) -> dict[str, str]:
        return {**_public_members(self.private_key), "kid": self.kid, "use": "sig", "alg": self.alg}

    def certificate_pem(self) -> bytes | None:
        if self.certificate is None:
            return None
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Rotation:
    """What `rotate` did: keys created (`next` with their activate_at, or `active` at once),
    keys retiring with their retire_at (the keys the new set replaces included, with the
    retire_at they get once it signs), kids pruned, and kids of a waiting `next` set that
    `--now` replaced (never used, private keys deleted)."""

    created: tuple[KeyInfo, ...]
    retiring: tuple[KeyInfo, ...]
    pruned: tuple[str, ...]
    discarded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Revocation:
    """What `revoke` did: the key revoked (in its state just before), the key created to sign
    for its alg in its place (None when the revoked key did not sign), the files deleted, and
    a key of the same alg still waiting to sign (`next`), which may have leaked with it."""

    revoked: KeyInfo
    replacement: KeyInfo | None
    deleted: tuple[Path, ...]
    waiting: KeyInfo | None = None


@dataclass(frozen=True)
class _Loaded:
    info: KeyInfo
    key: SigningKey


@dataclass(frozen=True)
class _Snapshot:
    """One manifest, loaded. The effective states depend on the clock as well: `views[n]` is
    the key list once the first n of the sorted `boundaries` (the `next` keys' activate_at)
    have passed, so a read costs one bisect, whatever the snapshot's age."""

    stamp: tuple[int, int, int]
    keys: tuple[_Loaded, ...]
    boundaries: tuple[datetime, ...]
    views: tuple[tuple[_Loaded, ...], ...]

    def at(self, now: datetime) -> tuple[_Loaded, ...]:
        return self.views[bisect.bisect_right(self.boundaries, now)]


class KeyStore:
    """The signing keys in one folder; safe to share between threads, processes and hosts
    that see the same file system (flock must work on it: local disks and NFSv4 do)."""

    def __init__(self, folder: Path, *, issuer: str = "http://127.0.0.1:8000") -> None:
        self.folder = Path(folder)
        self.issuer = issuer
        self._snapshot: _Snapshot | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.folder)!r})"

    @classmethod
    def for_settings(cls, settings: Settings) -> KeyStore:
        return cls(settings.instance_dir / "keys", issuer=settings.issuer)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    # --- reading ---------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the first key set unless one exists, then load it (what start-up calls)."""
        if not self.manifest_path.exists():
            self._prepare_folder()
            with self._locked(exclusive=True):
                if not self.manifest_path.exists():
                    now = clock.now()
                    infos = self._create_set(now)
                    self._write_manifest(list(infos), [])
        self._current()

    def entries(self, now: datetime | None = None) -> tuple[KeyInfo, ...]:
        """The manifest's keys in manifest order, in their effective states at `now` (default:
        the clock), no key material."""
        return tuple(loaded.info for loaded in self._view(now))

    def active(self, alg: str, now: datetime | None = None) -> SigningKey:
        """The key to sign with for `alg` ("RS256" or "ES256") at `now` (default: the clock):
        a `next` key once its activate_at has passed."""
        for loaded in self._view(now):
            if loaded.info.alg == alg and loaded.info.state == "active":
                return loaded.key
        raise KeyStoreError(f"GATEWAY_INSTANCE_DIR: no active {alg} key in {self.folder}")

    def published(self, now: datetime | None = None) -> list[dict[str, str]]:
        """Public JWKs of the active keys, of the next keys (published before they sign) and
        of the retiring keys whose retire_at is still ahead, in that order, newest first
        within each. The same manifest and time give the same list in every process."""
        return [loaded.key.public_jwk() for loaded in self._published(now)]

    def jwks(self, now: datetime | None = None) -> dict[str, list[dict[str, str]]]:
        """The JWK Set document (RFC 7517 section 5) for the OIDC `jwks_uri`."""
        return {"keys": self.published(now)}

    def certificates(self, now: datetime | None = None) -> list[x509.Certificate]:
        """Certificates of the published RSA keys, active first (for SAML metadata, which
        lists the next one, so SPs have it before it signs, and the retiring one)."""
        return [
            loaded.key.certificate
            for loaded in self._published(now)
            if loaded.key.certificate is not None
        ]

    def _published(self, now: datetime | None) -> list[_Loaded]:
        now = now or clock.now()
        keys = self._current().at(now)
        # Stable sorts: keys of one set (same created_at) keep manifest order, RS256 first.
        active = sorted((k for k in keys if k.info.state == "active"),
                        key=lambda k: k.info.created_at, reverse=True)
        waiting = sorted((k for k in keys if k.info.state == "next"),
                         key=lambda k: k.info.created_at, reverse=True)
        retiring = [
            k for k in keys
            if k.info.state == "retiring" and k.info.retire_at is not None
            and k.info.retire_at > now
        ]
        retiring.sort(key=lambda k: (k.info.created_at, k.info.kid), reverse=True)
        return active + waiting + retiring

    def _view(self, now: datetime | None) -> tuple[_Loaded, ...]:
        return self._current().at(now or clock.now())

    def _current(self) -> _Snapshot:
        stamp = self._stamp()
        snapshot = self._snapshot
        if snapshot is not None and snapshot.stamp == stamp:
            return snapshot
        with self._mutex:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.stamp == self._stamp():
                return snapshot
            # A shared lock: a prune deletes private key files after writing the manifest,
            # and must not do so while we load the keys the old manifest names.
            with self._locked(exclusive=False):
                self._check_folder()
                stamp = self._stamp()
                infos, _retired = self._read_manifest()
                loaded = tuple(_Loaded(info, self._load_key(info)) for info in infos)
            self._snapshot = _snapshot(stamp, loaded)
            return self._snapshot

    def _stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.manifest_path)
        except FileNotFoundError:
            raise KeyStoreError(
                f"GATEWAY_INSTANCE_DIR: {self.manifest_path} is missing (no keys were created "
                "there, or the folder was removed)"
            ) from None
        except OSError as exc:
            raise self._os_error("cannot read", self.manifest_path, exc) from None
        # write-then-rename gives every manifest a new inode, so two writes within one mtime
        # tick are still told apart.
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_manifest(self) -> tuple[list[KeyInfo], list[dict[str, Any]]]:
        path = self.manifest_path
        try:
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise self._os_error("cannot read", path, exc) from None
        except ValueError:
            raise KeyStoreError(f"GATEWAY_INSTANCE_DIR: {path} is not valid JSON") from None
        try:
            return _parse_manifest(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"GATEWAY_INSTANCE_DIR: {path} is malformed ({exc})") from None

    def _load_key(self, info: KeyInfo) -> SigningKey:
        key_path = self._key_path(info.kid)
        _check_private(key_path)
        try:
            data = key_path.read_bytes()
        except OSError as exc:
            raise self._os_error("cannot read", key_path, exc) from None
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # The library's message could quote the input; ours names the file only.
            private_key = None
        if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyStoreError(
                f"GATEWAY_INSTANCE_DIR: {key_path} does not hold a usable private key"
            )
        if _kty(private_key) != info.kty or _thumbprint(private_key) != info.kid:
            raise KeyStoreError(
                f"GATEWAY_INSTANCE_DIR: {key_path} does not hold the key the manifest names"
            )
        certificate = None
        cert_path = None
        if info.kty == "RSA":
            cert_path = self._cert_path(info.kid)
            try:
                certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except OSError as exc:
                raise self._os_error("cannot read", cert_path, exc) from None
            except ValueError:
                raise KeyStoreError(
                    f"GATEWAY_INSTANCE_DIR: {cert_path} is not a PEM certificate"
                ) from None
            if _public_members(certificate.public_key()) != _public_members(private_key):
                raise KeyStoreError(
                    f"GATEWAY_INSTANCE_DIR: {cert_path} does not certify the key {info.kid}"
                )
        return SigningKey(
            kid=info.kid,
            alg=info.alg,
            private_key=private_key,
            key_path=key_path,
            certificate=certificate,
            cert_path=cert_path,
        )

    # --- changing --------------------------------------------------------------------------

    def rotate(self, now: datetime, publish_for: timedelta = PUBLISH_BEFORE_SIGN) -> Rotation:
        """Add a new RSA and EC key set, published at once and signing from
        `now + publish_for` (state `next` until then); the keys it replaces retire
        RETIRE_AFTER after that and stay published until then. Keys already past their
        retire_at are pruned on the way. Without any keys yet, creates the first set, active.

        Refused while a set is still waiting to sign, unless `publish_for` is zero (`--now`,
        a suspected compromise): then the new set is active at once, the waiting set is
        dropped unused (private keys deleted) and the active keys retire from `now`."""
        if publish_for < timedelta(0):
            raise ValueError("publish_for must not be negative")
        self._prepare_folder()
        with self._locked(exclusive=True):
            if not self.manifest_path.exists():
                created = self._create_set(now)
                self._write_manifest(list(created), [])
                return Rotation(created=created, retiring=(), pruned=())
            infos, retired = self._read_manifest()
            infos = _effective(infos, now)
            infos, retired, pruned = self._prune(infos, retired, now)
            waiting = [i for i in infos if i.state == "next"]
            if waiting and publish_for:
                at = min(i.activate_at or now for i in waiting)
                raise KeyStoreError(
                    f"a new key set is already waiting to become active at {_iso(at)}; "
                    "use --now to activate a new set at once"
                )
            for info in waiting:
                jwk = self._load_key(info).public_jwk()
                retired = [*retired, {**info.to_json(), "state": "retired",
                                      "retire_at": _iso(now), "public_jwk": jwk}]
            discarded = tuple(i.kid for i in waiting)
            infos = [i for i in infos if i.state != "next"]
            activate_at = now + publish_for
            created = self._create_set(now, activate_at if publish_for else None)
            retiring = [
                replace(i, state="retiring", retire_at=activate_at + RETIRE_AFTER)
                if i.state == "active" else i
                for i in infos
            ]
            if publish_for:
                # The replaced keys sign until activate_at; readers retire them from then on.
                self._write_manifest(infos + list(created), retired)
            else:
                self._write_manifest(retiring + list(created), retired)
            self._delete_private(pruned + discarded)
            self._sweep({i.kid for i in infos} | {i.kid for i in created})
        self._current()
        return Rotation(
            created=created,
            retiring=tuple(i for i in retiring if i.state == "retiring"),
            pruned=pruned,
            discarded=discarded,
        )

    def prune(self, now: datetime) -> tuple[str, ...]:
        """Drop keys whose retire_at has passed: out of the manifest (their public JWK is kept
        under `retired`, to check old signatures in an investigation) and their private key
        file deleted, since nothing may sign with them again and a private key that no longer
        exists cannot leak. Returns the pruned kids."""
        if not self.manifest_path.exists():
            return ()
        with self._locked(exclusive=True):
            read, retired = self._read_manifest()
            infos = _effective(read, now)
            infos, retired, pruned = self._prune(infos, retired, now)
            if pruned or infos != read:
                self._write_manifest(infos, retired)
                self._delete_private(pruned)
            self._sweep({i.kid for i in infos})
        self._current()
        return pruned

    def revocable(self, kid: str, now: datetime) -> KeyInfo:
        """The manifest entry `revoke(kid, now)` would revoke, in its state at `now`; raises
        KeyStoreError as `revoke` would. Changes nothing (for a confirmation question)."""
        self._ready_to_change()
        with self._locked(exclusive=False):
            infos, retired = self._read_manifest()
            return _revocable(kid, _effective(infos, now), retired, self.manifest_path)

    def revoke(self, kid: str, now: datetime) -> Revocation:
        """Take the key `kid` out of publication at once, for a leaked private key: unlike a
        retiring key, which stays published for RETIRE_AFTER, relying parties that refetch our
        JWK Set or SAML metadata stop accepting its signatures.

        The key moves to `retired` with its public JWK (for investigations; null if its file
        was already unusable) and `revoked_at`; its private key and certificate files are
        deleted. If it was the active key of its alg, a new key of that alg is created and
        signs at once. A `next` key of that alg that waits is *not* activated in its place:
        it lay in the same folder as the leaked key, so it may have leaked too (and a planned
        activation should not silently become an emergency one); it stays `next` and takes
        over at its activate_at, unless it is revoked as well. Other processes pick the
        change up on their next use, as after `rotate` (the manifest gets a new inode).

        Raises KeyStoreError for a kid the manifest does not name, or one already retired or
        revoked; nothing is changed then."""
        self._ready_to_change()
        with self._locked(exclusive=True):
            read, retired = self._read_manifest()
            infos = _effective(read, now)
            target = _revocable(kid, infos, retired, self.manifest_path)
            try:
                public_jwk: dict[str, str] | None = self._load_key(target).public_jwk()
            except KeyStoreError:
                public_jwk = None  # the kid, a thumbprint, still names the public key
            replacement = self._create_key(target.alg, now) if target.state == "active" else None
            keep = [i for i in infos if i.kid != target.kid]
            if replacement is not None:
                keep.append(replacement)
            record = {**target.to_json(), "state": "retired", "retire_at": _iso(now),
                      "revoked_at": _iso(now), "public_jwk": public_jwk}
            # The manifest first: from here on no process publishes or signs with the key.
            self._write_manifest(keep, [*retired, record])
            deleted = self._delete_files(target.kid)
            self._sweep({i.kid for i in keep})
        self._current()
        waiting = next((i for i in keep if i.alg == target.alg and i.state == "next"), None)
        return Revocation(revoked=target, replacement=replacement, deleted=deleted,
                          waiting=waiting)

    def _ready_to_change(self) -> None:
        """The folder exists, is private and holds a manifest (never created by `revoke`)."""
        self._check_folder()
        self._stamp()

    def _delete_files(self, kid: str) -> tuple[Path, ...]:
        """Delete the key's private key and certificate files; returns those that existed."""
        deleted: list[Path] = []
        for path in (self._key_path(kid), self._cert_path(kid)):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise KeyStoreError(
                    f"GATEWAY_INSTANCE_DIR: key {kid} is unpublished, but {path} cannot be "
                    f"deleted ({exc.strerror}); delete it by hand"
                ) from None
            deleted.append(path)
        self._fsync_folder()
        return tuple(deleted)

    def _prune(
        self, infos: list[KeyInfo], retired: list[dict[str, Any]], now: datetime
    ) -> tuple[list[KeyInfo], list[dict[str, Any]], tuple[str, ...]]:
        keep: list[KeyInfo] = []
        pruned: list[str] = []
        for info in infos:
            if info.state == "retiring" and info.retire_at is not None and info.retire_at <= now:
                jwk = self._load_key(info).public_jwk()
                retired = [*retired, {**info.to_json(), "state": "retired", "public_jwk": jwk}]
                pruned.append(info.kid)
            else:
                keep.append(info)
        return keep, retired, tuple(pruned)

    def _create_set(
        self, now: datetime, activate_at: datetime | None = None
    ) -> tuple[KeyInfo, ...]:
        return tuple(self._create_key(alg, now, activate_at) for alg in ALGORITHMS)

    def _create_key(
        self, alg: str, now: datetime, activate_at: datetime | None = None
    ) -> KeyInfo:
        """Write one new key's files (not the manifest): `next` from `activate_at` if given,
        else `active`."""
        key: PrivateKey
        if alg == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        kid = _thumbprint(key)
        self._write_file(
            self._key_path(kid),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        if isinstance(key, rsa.RSAPrivateKey):
            cert = _self_signed(key, self.issuer, now)
            self._write_file(self._cert_path(kid), cert.public_bytes(serialization.Encoding.PEM))
        return KeyInfo(
            kid=kid, kty=_KTY[alg], alg=alg, use="sig", created_at=now,
            state="next" if activate_at else "active", retire_at=None,
            activate_at=activate_at,
        )

    def _write_manifest(self, infos: list[KeyInfo], retired: list[dict[str, Any]]) -> None:
        document = {
            "version": MANIFEST_VERSION,
            "keys": [i.to_json() for i in infos],
            "retired": retired,
        }
        self._write_file(
            self.manifest_path, (json.dumps(document, indent=2) + "\n").encode()
        )

    def _write_file(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._fsync_folder()
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._os_error("cannot write", path, exc) from None

    def _delete_private(self, kids: tuple[str, ...]) -> None:
        for kid in kids:
            with contextlib.suppress(FileNotFoundError):
                self._key_path(kid).unlink()
        if kids:
            self._fsync_folder()

    def _sweep(self, kids: set[str]) -> None:
        """Remove private keys no manifest names and temporary files: what a writer that
        crashed between writing a key and writing the manifest left behind. Only called under
        the exclusive lock, so no other writer is half-way."""
        for path in self.folder.glob("*.key.pem"):
            if path.name.removesuffix(".key.pem") not in kids:
                with contextlib.suppress(OSError):
                    path.unlink()
        for path in self.folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()

    def _fsync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _prepare_folder(self) -> None:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error("cannot create", self.folder, exc) from None
        self._check_folder()

    def _check_folder(self) -> None:
        try:
            st = os.stat(self.folder)
        except OSError as exc:
            raise self._os_error("cannot read", self.folder, exc) from None
        if st.st_mode & 0o077:
            raise KeyStoreError(
                f"GATEWAY_INSTANCE_DIR: {self.folder} is open to other users "
                f"(mode {st.st_mode & 0o777:o}); chmod 700 it"
            )

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        path = self.folder / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._os_error("cannot lock", path, exc) from None
        try:
            # flock(2), not lockf: its locks belong to the open file, so two threads of one
            # process exclude each other as well as two processes do.
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _key_path(self, kid: str) -> Path:
        return self.folder / f"{_checked_kid(kid)}.key.pem"

    def _cert_path(self, kid: str) -> Path:
        return self.folder / f"{_checked_kid(kid)}.crt.pem"

    @staticmethod
    def _os_error(what: str, path: Path, exc: OSError) -> KeyStoreError:
        return KeyStoreError(f"GATEWAY_INSTANCE_DIR: {what} {path} ({exc.strerror})")


def _parse_manifest(data: Any) -> tuple[list[KeyInfo], list[dict[str, Any]]]:
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"version must be {MANIFEST_VERSION}")
    raw_keys = data["keys"]
    retired = data.get("retired", [])
    if not isinstance(raw_keys, list) or not isinstance(retired, list):
        raise ValueError("keys and retired must be lists")
    infos: list[KeyInfo] = []
    for n, raw in enumerate(raw_keys):
        if not isinstance(raw, dict):
            raise ValueError(f"keys[{n}] is not an object")
        alg = raw["alg"]
        if alg not in ALGORITHMS or raw["kty"] != _KTY[alg] or raw["use"] != "sig":
            raise ValueError(f"keys[{n}]: unknown alg/kty/use")
        state = raw["state"]
        if state not in ("next", "active", "retiring"):
            raise ValueError(f"keys[{n}]: state must be next, active or retiring")
        retire_at = _parse_time(raw["retire_at"]) if raw["retire_at"] is not None else None
        # Optional: manifests written before the `next` state have no activate_at.
        raw_activate = raw.get("activate_at")
        activate_at = _parse_time(raw_activate) if raw_activate is not None else None
        if (retire_at is not None) != (state == "retiring"):
            raise ValueError(f"keys[{n}]: a retiring key, and only a retiring key, has retire_at")
        if (activate_at is not None) != (state == "next"):
            raise ValueError(f"keys[{n}]: a next key, and only a next key, has activate_at")
        infos.append(
            KeyInfo(
                kid=_checked_kid(raw["kid"]),
                kty=raw["kty"],
                alg=alg,
                use="sig",
                created_at=_parse_time(raw["created_at"]),
                state=state,
                retire_at=retire_at,
                activate_at=activate_at,
            )
        )
    for alg in ALGORITHMS:
        if sum(1 for i in infos if i.alg == alg and i.state == "active") != 1:
            raise ValueError(f"needs exactly one active {alg} key")
        if sum(1 for i in infos if i.alg == alg and i.state == "next") > 1:
            raise ValueError(f"has more than one next {alg} key")
    if len({i.kid for i in infos}) != len(infos):
        raise ValueError("a kid appears twice")
    return infos, retired


def _revocable(
    kid: str, infos: Sequence[KeyInfo], retired: Sequence[Any], manifest: Path
) -> KeyInfo:
    """The entry of `infos` named `kid`, or KeyStoreError saying why it cannot be revoked."""
    for info in infos:
        if info.kid == kid:
            return info
    for entry in retired:
        if isinstance(entry, dict) and entry.get("kid") == kid:
            if entry.get("revoked_at"):
                raise KeyStoreError(f"KID: key {kid} was already revoked at {entry['revoked_at']}")
            raise KeyStoreError(
                f"KID: key {kid} is already retired (unpublished, private key deleted)"
            )
    # repr: the argument is typed by a person and may hold anything, a line break included.
    shown = repr(kid[:60]) + ("..." if len(kid) > 60 else "")
    raise KeyStoreError(f"KID: no key {shown} in {manifest}")


def _effective(infos: Sequence[KeyInfo], now: datetime) -> list[KeyInfo]:
    """The keys' states at `now`: a `next` key whose activate_at has passed is active, and the
    active key of its alg retiring from then, until activate_at + RETIRE_AFTER."""
    due = {
        i.alg: i.activate_at
        for i in infos
        if i.state == "next" and i.activate_at is not None and i.activate_at <= now
    }
    effective: list[KeyInfo] = []
    for info in infos:
        at = due.get(info.alg)
        if at is not None and info.state == "next":
            info = replace(info, state="active", activate_at=None)
        elif at is not None and info.state == "active":
            info = replace(info, state="retiring", retire_at=at + RETIRE_AFTER)
        effective.append(info)
    return effective


def _snapshot(stamp: tuple[int, int, int], keys: tuple[_Loaded, ...]) -> _Snapshot:
    """A snapshot with one view per stretch of time between the `next` keys' activate_at."""
    boundaries = tuple(sorted({
        k.info.activate_at for k in keys if k.info.state == "next" and k.info.activate_at
    }))
    by_kid = {k.info.kid: k.key for k in keys}
    views = [keys]
    for at in boundaries:
        infos = _effective([k.info for k in keys], at)
        views.append(tuple(_Loaded(info, by_kid[info.kid]) for info in infos))
    return _Snapshot(stamp, keys, boundaries, tuple(views))


def _checked_kid(kid: Any) -> str:
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError("a kid is not a JWK thumbprint")
    return kid


def _check_private(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyStore._os_error("cannot read", path, exc) from None
    if st.st_mode & 0o077:
        raise KeyStoreError(
            f"GATEWAY_INSTANCE_DIR: {path} is readable by other users "
            f"(mode {st.st_mode & 0o777:o}); chmod 600 it, and rotate if it may have leaked"
        )


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("a time is not a string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a time has no time zone")
    return parsed.astimezone(UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def _kty(key: PrivateKey) -> str:
    return "RSA" if isinstance(key, rsa.RSAPrivateKey) else "EC"


def _public_members(key: Any) -> dict[str, str]:
    """The required public members of the JWK (RFC 7518 sections 6.2.1 and 6.3.1)."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": _b64(_int_bytes(numbers.n)), "e": _b64(_int_bytes(numbers.e))}
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        point = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(_int_bytes(point.x, 32)),
            "y": _b64(_int_bytes(point.y, 32)),
        }
    raise KeyStoreError("GATEWAY_INSTANCE_DIR: a key is neither RSA nor EC P-256")


def _thumbprint(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    members = json.dumps(_public_members(key), sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(members.encode("ascii")).digest())


def _self_signed(key: rsa.RSAPrivateKey, issuer: str, now: datetime) -> x509.Certificate:
    host = issuer.split("://", 1)[-1].split("/", 1)[0] or "abroad-gateway"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "abroad-gateway"),
            # X.520 caps a common name at 64 characters.
            x509.NameAttribute(NameOID.COMMON_NAME, host[:64]),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_BACKDATE)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,  # SAML: SPs encrypt assertions' keys to us
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


# --- app and command line --------------------------------------------------------------------


def init_app(app: Flask, settings: Settings) -> KeyStore:
    """Create the keys on first start (race-free across workers) and load them."""
    store = KeyStore.for_settings(settings)
    store.ensure()
    app.extensions["gateway.keys"] = store
    return store


def get_keys(app: Flask | None = None) -> KeyStore:
    store: KeyStore = (app or current_app).extensions["gateway.keys"]
    return store


@click.group("keys")
def keys_cli() -> None:
    """Signing keys."""


@keys_cli.command("rotate")
@click.option(
    "--now", "at_once", is_flag=True,
    help="Sign with the new keys at once (a suspected key compromise), instead of publishing "
    "them for two days first; replaces a new set that is still waiting.",
)
def rotate_command(at_once: bool) -> None:
    """Add a new RSA and EC signing key, published now and signing two days later; the old
    ones sign until then and stay published until they retire."""
    from gateway.cli import Failure, load_settings

    settings = load_settings()
    store = KeyStore.for_settings(settings)
    try:
        result = store.rotate(
            clock.now(), publish_for=timedelta(0) if at_once else PUBLISH_BEFORE_SIGN
        )
    except SettingsError as exc:
        raise Failure(str(exc)) from None
    for kid in result.discarded:
        click.echo(f"waiting key {kid} discarded: never used, private key deleted")
    for info in result.created:
        if info.activate_at is not None:
            click.echo(f"new {info.alg} key {info.kid} (published now, signs from "
                       f"{_iso(info.activate_at)})")
        else:
            click.echo(f"new {info.alg} key {info.kid} (active)")
    for info in result.retiring:
        assert info.retire_at is not None
        click.echo(f"{info.alg} key {info.kid} retires at {_iso(info.retire_at)}")
    for kid in result.pruned:
        click.echo(f"key {kid} retired: unpublished, private key deleted")


class _RevokeError(click.ClickException):
    """A refused or failed revocation: one line, as `gateway.cli.Failure` prints it (which
    this module cannot import at load time), but exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"gateway: {self.format_message()}", err=True)


def _error(message: str) -> click.ClickException:
    return _RevokeError(message)


# A kid is a base64url thumbprint and may begin with "-": taken as the KID, not an unknown option.
@keys_cli.command("revoke", context_settings={"ignore_unknown_options": True})
@click.argument("kid")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def revoke_command(kid: str, yes: bool) -> None:
    """Unpublish the signing key KID at once (it leaked) and delete its private key; if it
    was signing, a new key of its algorithm signs from now. Recorded in the audit log.

    Exit 1 if not confirmed, 2 on an error (nothing changed, unless the line says so)."""
    from gateway.cli import Failure, load_settings

    try:
        settings = load_settings()
    except Failure as exc:
        raise _error(exc.format_message()) from None
    store = KeyStore.for_settings(settings)
    try:
        target = store.revocable(kid, clock.now())
    except SettingsError as exc:
        raise _error(str(exc)) from None
    if not yes:
        question = (
            f"Revoke {target.alg} key {target.kid} ({target.state})? Relying parties stop "
            "accepting what it signed as soon as they refetch our keys"
        )
        try:
            confirmed = click.confirm(question, default=False, err=True)
        except click.Abort:  # end of input: no answer is no
            confirmed = False
        if not confirmed:
            raise Failure("nothing revoked: not confirmed (--yes skips the question)")
    try:
        result = store.revoke(kid, clock.now())
    except SettingsError as exc:
        raise _error(str(exc)) from None
    revoked = result.revoked
    click.echo(f"{revoked.alg} key {revoked.kid} revoked: unpublished now (it was {revoked.state})")
    if result.replacement is not None:
        click.echo(f"new {result.replacement.alg} key {result.replacement.kid} (active)")
    for path in result.deleted:
        click.echo(f"deleted {path}")
    if result.waiting is not None and result.waiting.activate_at is not None:
        click.echo(
            f"{result.waiting.alg} key {result.waiting.kid} still waits to sign from "
            f"{_iso(result.waiting.activate_at)}; revoke it too if it may have leaked"
        )
    seq = _audit_revocation(settings, revoked.kid)
    click.echo(f"audit log entry {seq}: keys.revoke key:{revoked.kid}")


def _audit_revocation(settings: Settings, kid: str) -> int:
    """Record the revocation in the audit log; returns the entry's seq. Written after the
    revocation, which must not wait for (or fail with) the database."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway import audit
    from gateway.db import Database

    database = Database(settings.database_url, serving=False)
    try:
        with database.begin() as session:
            entry = audit.record(
                session, actor="cli", role="operator", desk=None, action="keys.revoke",
                object_ref=f"key:{kid}", outcome="ok", settings=settings,
            )
    except (SQLAlchemyError, audit.AuditDataError) as exc:
        raise _error(
            f"GATEWAY_DATABASE_URL: key {kid} is revoked, but the audit log entry could not be "
            f"written ({type(exc).__name__}); record the revocation by hand"
        ) from None
    finally:
        database.dispose()
    return entry.seq
