"""The eIDAS node simulator's web app: metadata, the test-person page, the answer to the connector.

SAML 2.0 Web Browser SSO (Profiles 4.1) with the HTTP-POST binding (Bindings 3.5) both ways, as
an eIDAS proxy service runs it (eIDAS Interoperability Architecture):

- `GET /metadata`: the node's signed metadata (the entity ID is this URL).
- `POST /sso`: the connector's AuthnRequest (`SAMLRequest`, `RelayState`, and `country`, the
  citizen's choice, as the eIDAS-Node demo SP sends it). Checked and verified against the SP
  metadata (fetched on first use, fetched again once when a signature does not verify, so a
  rotated connector key is picked up), then kept here under a random handle and the browser
  sent (303) to `GET /sso?request=<handle>`: the page can be reloaded or switched to the other
  language without losing the request.
- `GET /sso`: the bilingual page listing the test persons of the requested country at or above
  the requested LoA, a "Cancel" button, and test options (a failing authentication, or a
  deliberately wrong answer for showing the gateway refuse it).
- `POST /sso/answer`: the answer, once per request: an auto-submitting form (a same-origin
  script; without JavaScript the visible Continue button) that posts `SAMLResponse` and
  `RelayState` to the connector's assertion consumer service from its metadata.

Cancel answers Responder + RequestDenied ("citizen consent not given"), as the eIDAS-Node does
when a citizen declines; a failed authentication answers Responder + AuthnFailed.
`delay` makes every answer of the simulator that many seconds late (a slow node).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import requests
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from gateway.eidas_sim.node import (
    STATUS_AUTHN_FAILED,
    STATUS_REQUEST_DENIED,
    AuthnRequestInfo,
    MetadataError,
    RequestError,
    SignatureInvalid,
    SimulatedNode,
    UnknownIssuer,
    encode,
)
from gateway.eidas_sim.persons import (
    COUNTRIES,
    LOA_NAMES,
    LOA_ORDER,
    PERSONS,
    TestPerson,
    loa_rank,
    persons_for,
)
from gateway.i18n import lazy_gettext
from gateway.settings import Settings
from gateway.web.csrf import csrf_exempt
from gateway.web.errors import init_companion_app

__all__ = ["DEFAULT_BASE_URL", "SpMetadataSource", "create_sim_app"]

DEFAULT_BASE_URL: Final = "http://127.0.0.1:8002"
SIM_KEY: Final = "gateway_eidas_sim"
SESSION_COOKIE: Final = "eidas_sim_session"
#: A request waits this long for the citizen's choice (the connector's own window is shorter).
PENDING_TTL: Final = timedelta(minutes=15)
MAX_PENDING: Final = 1000
HTTP_TIMEOUT: Final = 10.0
MAX_METADATA_BYTES: Final = 1024 * 1024
#: The connector's metadata path under its issuer (gateway.routes.eidas).
SP_METADATA_PATH: Final = "/eidas/metadata"

#: Test options on the page: deliberately wrong answers a connector must refuse.
MODES: Final = {
    "normal": lazy_gettext("Answer correctly"),
    "lower_loa": lazy_gettext("Claim a level of assurance below the one requested"),
    "expired": lazy_gettext("Send an assertion that has already expired"),
    "wrong_audience": lazy_gettext("Address the assertion to another service (wrong Audience)"),
    "unsigned_assertion": lazy_gettext("Leave the assertion unsigned"),
    "unencrypted": lazy_gettext("Leave the assertion unencrypted"),
}

#: The member states the simulator has test persons for, by ISO 3166-1 alpha-2 code.
COUNTRY_NAMES: Final = {
    "AT": lazy_gettext("Austria"),
    "BE": lazy_gettext("Belgium"),
    "DE": lazy_gettext("Germany"),
    "ES": lazy_gettext("Spain"),
    "FR": lazy_gettext("France"),
    "IT": lazy_gettext("Italy"),
    "PL": lazy_gettext("Poland"),
}
#: How the page names the eIDAS levels of assurance.
LOA_LABELS: Final = {
    "low": lazy_gettext("low"),
    "substantial": lazy_gettext("substantial"),
    "high": lazy_gettext("high"),
}

NOT_ACCEPTED: Final = lazy_gettext("The login request of the service did not pass the checks.")
NO_METADATA: Final = lazy_gettext("The simulator cannot read the service's metadata.")
UNKNOWN_REQUEST: Final = lazy_gettext(
    "This login request is unknown or has expired. Go back to the service and start again."
)
SPENT_REQUEST: Final = lazy_gettext(
    "This login request is unknown, has expired or was already answered. Go back to the "
    "service and start again."
)

bp = Blueprint("eidas_sim", __name__)


class SpMetadataSource:
    """Where the connector's metadata comes from: an http(s) URL or a file."""

    def __init__(self, location: str) -> None:
        self.location = location

    @property
    def is_url(self) -> bool:
        return urlsplit(self.location).scheme in ("http", "https")

    def load(self) -> bytes:
        if not self.is_url:
            try:
                return Path(self.location).read_bytes()
            except OSError as exc:
                raise MetadataError(f"cannot read the SP metadata file {self.location}") from exc
        try:
            response = requests.get(self.location, timeout=HTTP_TIMEOUT, stream=True)
            response.raise_for_status()
            data = response.raw.read(MAX_METADATA_BYTES + 1, decode_content=True)
        except (requests.RequestException, OSError) as exc:
            raise MetadataError(f"cannot fetch the SP metadata from {self.location}") from exc
        if len(data) > MAX_METADATA_BYTES:
            raise MetadataError("the SP metadata is too large")
        return bytes(data)


@dataclass(frozen=True)
class Pending:
    request: AuthnRequestInfo
    relay_state: str | None
    country: str


class PendingRequests:
    """Checked requests waiting for the citizen, by random handle; bounded in number and age."""

    def __init__(self, ttl: timedelta = PENDING_TTL, limit: int = MAX_PENDING) -> None:
        self._ttl = ttl.total_seconds()
        self._limit = limit
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, Pending]] = OrderedDict()

    def put(self, pending: Pending) -> str:
        handle = secrets.token_urlsafe(24)
        with self._lock:
            self._prune()
            self._items[handle] = (time.monotonic(), pending)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        return handle

    def get(self, handle: str) -> Pending | None:
        with self._lock:
            self._prune()
            item = self._items.get(handle)
        return item[1] if item else None

    def take(self, handle: str) -> Pending | None:
        with self._lock:
            self._prune()
            item = self._items.pop(handle, None)
        return item[1] if item else None

    def _prune(self) -> None:
        cutoff = time.monotonic() - self._ttl
        while self._items:
            _, (stamp, _) = next(iter(self._items.items()))
            if stamp >= cutoff:
                break
            self._items.popitem(last=False)


class Simulator:
    def __init__(self, node: SimulatedNode, source: SpMetadataSource | None,
                 delay: float) -> None:
        self.node = node
        self.source = source
        self.delay = delay
        self.pending = PendingRequests()
        self._lock = threading.Lock()

    def refresh_sp_metadata(self) -> None:
        if self.source is None:
            raise MetadataError("no SP metadata configured")
        data = self.source.load()
        with self._lock:
            self.node.set_sp_metadata(data)

    def check(self, saml_request: str) -> AuthnRequestInfo:
        """The checked request; metadata loaded on first use and refetched once when the
        request does not verify with what we have (a connector key rollover)."""
        if not self.node.has_sp_metadata:
            self.refresh_sp_metadata()
        try:
            return self.node.parse_request(saml_request)
        except RequestError as exc:
            if self.source is None or not _worth_refetching(exc):
                raise
        self.refresh_sp_metadata()
        return self.node.parse_request(saml_request)


def _worth_refetching(exc: RequestError) -> bool:
    return isinstance(exc, (SignatureInvalid, UnknownIssuer))


def get_sim() -> Simulator:
    sim: Simulator = current_app.extensions[SIM_KEY]
    return sim


def create_sim_app(
    settings: Settings | None = None,
    *,
    base_url: str = DEFAULT_BASE_URL,
    key_dir: Path | None = None,
    sp_metadata: str | bytes | None = None,
    delay: float = 0.0,
) -> Flask:
    """The simulator app, answering at `base_url`.

    `sp_metadata`: the connector's metadata itself (bytes), or a URL or file to load it from
    (default: the gateway's `{issuer}/eidas/metadata`). `key_dir` holds the node's key
    (default `<instance>/eidas-sim`); it is made on first start.
    """
    from gateway import i18n
    from gateway.web import csrf, headers, language_url

    settings = settings or Settings.from_env()
    base_url = base_url.rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ValueError("base URL: must be an http(s) origin such as " + DEFAULT_BASE_URL)
    if delay < 0:
        raise ValueError("delay: must not be negative")
    node = SimulatedNode(base_url, key_dir or settings.instance_dir / "eidas-sim")
    source: SpMetadataSource | None
    if isinstance(sp_metadata, bytes):
        node.set_sp_metadata(sp_metadata)
        source = None
    else:
        source = SpMetadataSource(sp_metadata or settings.issuer + SP_METADATA_PATH)

    app = Flask("gateway.eidas_sim", root_path=str(Path(__file__).resolve().parent))
    app.config.update(
        SECRET_KEY=settings.derive_key("eidas-sim-session"),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=base_url.startswith("https://"),
    )
    app.extensions[SIM_KEY] = Simulator(node, source, delay)
    i18n.init_app(app, settings)
    csrf.init_app(app)
    headers.init_app(app, settings.with_overrides(issuer=base_url))
    app.jinja_env.globals["language_url"] = language_url
    app.jinja_env.globals["loa_label"] = _loa_label
    app.jinja_env.globals["country_name"] = _country_name
    app.before_request(_slow_down)
    app.register_blueprint(bp)
    init_companion_app(app, "eidas_sim/error.html", "eidas-sim")
    return app


def _loa_label(loa: str) -> str:
    name = LOA_NAMES.get(loa, loa)
    return str(LOA_LABELS.get(name, name))


def _country_name(code: str) -> str:
    return str(COUNTRY_NAMES.get(code, code))


#: How the simulator waits (`--delay`): its own name, so a test can replace it for this
#: module without replacing `time.sleep` for every thread of the process.
_sleep = time.sleep


def _slow_down() -> None:
    delay = get_sim().delay
    if delay and request.endpoint != "static":
        _sleep(delay)


# --- pages ----------------------------------------------------------------------------------


@bp.get("/")
def home() -> str:
    by_country = {c: [p for p in PERSONS.values() if p.country == c] for c in COUNTRIES}
    return render_template("eidas_sim/home.html", by_country=by_country,
                           entity_id=get_sim().node.entity_id)


@bp.get("/metadata")
def metadata() -> Response:
    return Response(get_sim().node.metadata(), mimetype="application/samlmetadata+xml")


@bp.post("/sso")
@csrf_exempt  # the connector's cross-site POST, authenticated by the request's signature
def sso_post() -> BaseResponse | str:
    form = request.form
    saml_request = form.get("SAMLRequest", "")
    relay_state = form.get("RelayState")
    country = form.get("country", "").strip().upper()[:2]
    if not saml_request:
        return _refused(NOT_ACCEPTED,
                        detail="no SAMLRequest")
    if relay_state is not None and len(relay_state.encode("utf-8")) > 80:
        # SAML Bindings 3.5.3: RelayState MUST NOT exceed 80 bytes.
        return _refused(NOT_ACCEPTED,
                        detail="RelayState longer than 80 bytes")
    sim = get_sim()
    try:
        checked = sim.check(saml_request)
    except MetadataError as exc:
        current_app.logger.warning("eidas-sim: %s", exc)
        return _refused(NO_METADATA, 502,
                        detail=str(exc))
    except RequestError as exc:
        return _refused(NOT_ACCEPTED,
                        detail=str(exc))
    pending = Pending(checked, relay_state, country)
    if checked.is_passive:
        # eIDAS SAML Message Format: IsPassive must be false; a node cannot authenticate
        # without the citizen.
        return _answer(pending, status="NoPassive")
    handle = sim.pending.put(pending)
    return redirect(url_for("eidas_sim.sso_page", request=handle), code=303)


@bp.get("/sso")
def sso_page() -> BaseResponse | str:
    handle = request.args.get("request", "")
    pending = get_sim().pending.get(handle) if 0 < len(handle) <= 64 else None
    if pending is None:
        return _refused(UNKNOWN_REQUEST, 404)
    info = pending.request
    persons = [p for p in persons_for(pending.country, info.loa) if info.acceptable(p.loa)] if (
        pending.country in COUNTRIES) else []
    modes = dict(MODES)
    if loa_rank(info.loa) == 0:
        modes.pop("lower_loa")  # nothing lies below low
    return render_template(
        "eidas_sim/choose.html", handle=handle, pending=pending, persons=persons,
        country_known=pending.country in COUNTRIES, countries=COUNTRIES, modes=modes,
    )


@bp.post("/sso/answer")
def sso_answer() -> BaseResponse | str:
    handle = request.form.get("request", "")
    pending = get_sim().pending.take(handle) if 0 < len(handle) <= 64 else None
    if pending is None:
        return _refused(SPENT_REQUEST, 404)
    action = request.form.get("action", "")
    if action == "cancel":
        return _answer(pending, status=STATUS_REQUEST_DENIED)
    if action == "fail":
        return _answer(pending, status=STATUS_AUTHN_FAILED)
    person = PERSONS.get(request.form.get("person", ""))
    info = pending.request
    if (action != "login" or person is None or person.country != pending.country
            or not info.acceptable(person.loa)):
        abort(400)
    mode = request.form.get("mode", "normal")
    if mode not in MODES:
        abort(400)
    return _answer(pending, person=person, mode=mode)


def _answer(pending: Pending, *, person: TestPerson | None = None, status: str | None = None,
            mode: str = "normal") -> BaseResponse | str:
    from gateway import clock

    node = get_sim().node
    info = pending.request
    encrypt = sign_assertion = True
    loa = audience = None
    now = clock.now()
    if mode == "lower_loa" and person is not None:
        loa = LOA_ORDER[max(loa_rank(info.loa) - 1, 0)]
    elif mode == "expired":
        now -= timedelta(hours=1)
    elif mode == "wrong_audience":
        audience = "https://service.invalid/metadata"
    elif mode == "unsigned_assertion":
        sign_assertion = False
    elif mode == "unencrypted":
        encrypt = False
    try:
        xml = node.response_xml(info, person, loa=loa, status=status, encrypt=encrypt,
                                sign_assertion=sign_assertion, now=now, audience=audience)
    except MetadataError as exc:
        return _refused(NO_METADATA, 502,
                        detail=str(exc))
    from gateway.web import allow_form_action

    allow_form_action(info.acs_url)
    fields = [("SAMLResponse", encode(xml))]
    if pending.relay_state is not None:
        fields.append(("RelayState", pending.relay_state))
    return render_template("eidas_sim/post.html", action=info.acs_url, fields=fields,
                           person=person, status=status)


def _refused(message: object, status: int = 400, detail: str | None = None) -> Response:
    """A page for a request the simulator cannot answer: `message` for the person,
    `detail` (English, technical) for the developer."""
    body = render_template("eidas_sim/refused.html", message=str(message), detail=detail)
    return Response(body, status=status, mimetype="text/html")

