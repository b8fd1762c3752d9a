"""Server-side sessions in the shared store (OWASP Session Management Cheat Sheet).

The cookie carries only a random 256-bit session id; the data lives in the `SharedStore` as
JSON under an HMAC of that id (a dump of the store yields no usable session ids), with an idle
timeout of `IDLE_TIMEOUT` renewed when a request uses the session. A session id chosen by
a client is never adopted: an unknown id gets a fresh one on the first write (no fixation), and
the login code calls `regenerate_session()` at every login, which moves the data to a new id and
deletes the old entry (both in one store step when the response is saved).

A request that uses the session without changing it writes nothing back unless the entry was
last written more than `RENEW_AFTER` ago: the store's TTL is renewed at most that often, so an
idle session may end up to `RENEW_AFTER` before `IDLE_TIMEOUT` has passed since its last use
(never later), and a run of page views costs one store read each instead of a read and a write.
Changed data is always written.

The session is loaded lazily: a request that never touches `flask.session` reads nothing and
writes nothing, so bots and health checks cannot fill the store, and an empty session is never
stored at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import Flask, Request, Response, current_app
from flask import session as flask_session
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SessionInterface, SessionMixin

from gateway import clock
from gateway.settings import Settings
from gateway.store import Delete, Op, Set, SharedStore, get_store
from gateway.web.csrf import SESSION_KEY as CSRF_KEY
from gateway.web.csrf import new_secret as new_csrf_secret

#: Idle timeout: a session unused this long is gone (renewed on use, see RENEW_AFTER).
IDLE_TIMEOUT = timedelta(minutes=15)
#: An unchanged session is written back (renewing IDLE_TIMEOUT) only when its entry is older
#: than this: at most this much is taken off the idle timeout, never added to it.
RENEW_AFTER = timedelta(seconds=60)
#: Reserved key in the stored JSON: when the entry was written (POSIX seconds). Not part of
#: the session's data.
_WRITTEN_KEY = "_gw_written"
#: 32 random bytes, base64url without padding.
SESSION_ID_BYTES = 32
_SESSION_ID = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")
_serializer = TaggedJSONSerializer()


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


class StoreSession(SessionMixin):
    """A dict-like session whose data is fetched from the store on first use."""

    def __init__(
        self, interface: StoreSessionInterface, store: SharedStore, cookie_sid: str | None
    ) -> None:
        self._interface = interface
        self._store = store
        self.cookie_sid = cookie_sid
        #: The id the data will be saved under; None until there is something to save.
        self.sid: str | None = None
        self._stored_sid: str | None = None
        #: A stored id that regenerate() replaced: deleted when the response is saved.
        self._doomed_sid: str | None = None
        #: The entry as loaded (its JSON), and when it was written (None: unknown).
        self._loaded_raw: bytes | None = None
        self._written_at: float | None = None
        self._data: dict[str, Any] | None = None
        self.new = True
        self.modified = False
        self.accessed = False

    @property
    def loaded(self) -> bool:
        return self._data is not None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            self.accessed = True
            loaded = None
            if self.cookie_sid is not None:
                loaded = self._interface.load_entry(self._store, self.cookie_sid)
            if loaded is None:
                self._data = {}
            else:
                self._data, self._written_at, self._loaded_raw = loaded
                self.sid = self._stored_sid = self.cookie_sid
                self.new = False
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._load()[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._load()[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def regenerate(self) -> None:
        data = self._load()
        if self._stored_sid is not None:
            self._doomed_sid = self._stored_sid
        self._stored_sid = None
        self.sid = new_session_id()
        # A CSRF secret seen before the login must not survive it: a new one, at once.
        data[CSRF_KEY] = new_csrf_secret()
        self.modified = True


class StoreSessionInterface(SessionInterface):
    def __init__(self, settings: Settings) -> None:
        self.secure = settings.https
        # The __Host- prefix pins the cookie to this host, path / and HTTPS.
        self.cookie_name = "__Host-gw_session" if settings.https else "gw_session"
        self._key = settings.derive_key("session-id")

    def store_key(self, sid: str) -> str:
        return "session:" + hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def load(self, store: SharedStore, sid: str) -> dict[str, Any] | None:
        entry = self.load_entry(store, sid)
        return entry[0] if entry is not None else None

    def load_entry(
        self, store: SharedStore, sid: str
    ) -> tuple[dict[str, Any], float | None, bytes] | None:
        """The session's data, when its entry was written, and the entry as stored; or None."""
        raw = store.get(self.store_key(sid))
        if raw is None:
            return None
        try:
            data = _loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        written = data.pop(_WRITTEN_KEY, None)
        return data, float(written) if isinstance(written, int | float) else None, raw

    def open_session(self, app: Flask, request: Request) -> StoreSession:
        # `in` first: a missing key makes MultiDict.get raise and catch a BadRequestKeyError.
        cookies = request.cookies
        value = cookies.get(self.cookie_name) if self.cookie_name in cookies else None
        sid = value if value is not None and _SESSION_ID.match(value) else None
        return StoreSession(self, get_store(app), sid)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, StoreSession) or not session.loaded:
            return  # never touched: no store access, no cookie
        if not _varies_on_cookie(response):
            response.vary.add("Cookie")
        store = get_store(app)
        ops: list[Op] = []
        if session._doomed_sid is not None:
            ops.append(Delete(self.store_key(session._doomed_sid)))
        if not session:
            if session._stored_sid is not None:
                ops.append(Delete(self.store_key(session._stored_sid)))
            if ops:
                store.run(ops)
            if session.cookie_sid is not None:
                response.delete_cookie(
                    self.cookie_name, path="/", secure=self.secure, httponly=True, samesite="Lax"
                )
            return
        if session.sid is None:
            session.sid = new_session_id()
            # A new session gets its CSRF secret now: its first form is then no second write.
            session.setdefault(CSRF_KEY, new_csrf_secret())
        data = dict(session)
        now = clock.now().timestamp()
        written = session._written_at
        unchanged = (
            not ops
            and session.sid == session._stored_sid
            and written is not None
            and 0 <= now - written < RENEW_AFTER.total_seconds()
            # The data as it is now, serialised as it was stored, is byte for byte the entry
            # that was loaded: nothing changed, also not in place inside a value.
            and _dumps({**data, _WRITTEN_KEY: written}, app) == session._loaded_raw
        )
        if not unchanged:
            data[_WRITTEN_KEY] = now
            ops.append(Set(self.store_key(session.sid), _dumps(data, app), IDLE_TIMEOUT))
            store.run(ops)
        if session.sid != session.cookie_sid:
            # A browser-session cookie: the idle timeout on the server decides how long it works.
            response.set_cookie(
                self.cookie_name, session.sid, path="/", secure=self.secure, httponly=True,
                samesite="Lax",
            )
            # As `"Cache-Control" not in response.headers`, without the BadRequestKeyError
            # that Headers raises and catches for a missing name.
            if not any(key.lower() == "cache-control" for key, _ in response.headers):
                response.headers["Cache-Control"] = "no-store"


def _varies_on_cookie(response: Response) -> bool:
    """Whether `response.vary` (parsed from the first Vary header) already holds "Cookie",
    so that `response.vary.add("Cookie")` would change nothing (the language hook has set
    "Accept-Language, Cookie" on every page): without parsing the header into a HeaderSet.
    A quoted value is left to werkzeug's parser (False)."""
    for key, value in response.headers:
        if key.lower() == "vary":
            return '"' not in value and any(
                part.strip().lower() == "cookie" for part in value.split(",")
            )
    return False


def _dumps(data: dict[str, Any], app: Flask | None = None) -> bytes:
    if _plain(data):
        # What the tagged serializer writes for plain JSON values, without its walk over
        # every value (it tries each of its tags on each one): the same bytes.
        provider = (app if app is not None else current_app).json
        return provider.dumps(data, separators=(",", ":")).encode()
    return _serializer.dumps(data).encode()


def _loads(raw: bytes) -> Any:
    if b'{" ' not in raw:
        # No tagged value inside: a tag is an object whose one key begins with a space, and
        # compact JSON has that byte sequence nowhere else (a quote inside a string is \").
        return json.loads(raw)
    return _serializer.loads(raw.decode())


def _plain(value: Any) -> bool:
    """JSON as it is: values the tagged serializer leaves untouched (exact types: a str
    subclass such as Markup, or a tuple, gets a tag)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    if kind is dict:
        if len(value) == 1 and str(next(iter(value))).startswith(" "):
            return False  # looks like a tag: the serializer escapes such a dict
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def regenerate_session() -> str:
    """Give the current session a new id and delete the old entry; call at every login.

    The data stays (a login flow in progress keeps its state); the CSRF secret is renewed.
    Returns the new id (for tests; never log it).
    """
    session = flask_session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(session, StoreSession):
        raise RuntimeError("regenerate_session() needs the gateway's session interface")
    session.regenerate()
    assert session.sid is not None
    return session.sid


def init_app(app: Flask, settings: Settings) -> None:
    app.session_interface = StoreSessionInterface(settings)
