"""The login flow: one persisted state machine between relying parties and identity routes
(issue 5, item 3; issue 8, item 1; ARCHITECTURE.md habit 1, modelled on ory/kratos'
self-service login flow).

States and allowed moves (`TRANSITIONS`)::

                 +--> choose_route --> password --+--> choose_factor <--+
                 |                        |       |        |            |
    started -----+--> password            |       +--> second_factor ---+--> done
       |  |                               +-----------------------------^
       |  +--> choose_factor / second_factor   (SSO step-up: no password)
       +-----> done                            (SSO reuse: no interaction)

    choose_route --> external --> done         (an external route's identity provider answered)
                        |
                        +--> choose_route      ("choose another way": nothing came back)

    every state that is not final --> failed | expired        (final: done, failed, expired)

- `started`: the relying party's request (`RpRequest`) and the level to log in at are kept.
  `begin()` decides: reuse a usable SSO session that is high enough (unless force_authn or
  max_age says otherwise), step up an SSO session of an account route at basis to midden with
  only the second factor, refuse a passive request that would need the person
  (`login_required`), refuse an essential level no route reaches (`level_unavailable`), ask
  for the password when the one route on offer is an account route, or else let the person
  choose (`gateway.flows.routes.routes_for`). An SSO session from an external route is reused
  when its level is enough and never stepped up with an account's factors.
- `choose_route`: the enabled routes that can reach an acceptable level, one form each.
- `password`: username and password (`gateway.accounts.service.check_password`). Basis is
  done here; midden and higher need a second factor.
- `choose_factor`: the person picks SMS/voice or the authenticator app when both exist.
- `second_factor`: a code by SMS or voice (`gateway.sms.service`, purpose `login`, bound to
  this flow's id, so a code of another flow or purpose never works here) or a TOTP code.
- `external`: an external route (`IdentityRoute.kind == "external"`, e.g. eIDAS) sent the
  browser to its identity provider; its own blueprint ends the flow with
  `complete_external(identity)` (done) or `fail_external(code)` (failed), or the person
  chooses another way (back to `choose_route`; a late answer then finds the flow elsewhere).
- `done`: an SSO session is established or raised (`gateway.flows.sessions`), and the browser
  goes back to the relying party's `resume_url`. The flow row keeps the subject key and the
  attributes (sealed) of an external login for `finish()`.

`transition()` is the only way to change a state. It refuses a move not in the table
(`IllegalTransition`) and refuses every move out of a flow past its `expires_at` (moving it to
`expired` instead), and it changes the row with one conditional UPDATE (`WHERE state = <the
state it was read in>`), so two parallel requests can never both move one flow.

The API for protocol modules (OIDC, SAML, the "self" pages):

    response = start_login(rp_request)   # a redirect into the flow; bound to this browser
    ...                                  # the browser returns to rp_request.resume_url
                                         # with ?flow=<id>
    result = finish(flow_id)             # AuthnResult, once; or raises LoginError whose
                                         # .error (AuthnError) says why, for the RP's answer

`finish` only works in the browser session that started the flow and only once, so a flow id
that leaks (a log, a Referer) cannot be turned into a login by anyone else.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from flask import redirect, url_for
from flask import session as flask_session
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import set_committed_value
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock
from gateway.accounts.models import Account
from gateway.crypto import SealError, seal, unseal
from gateway.db import Base, Prepared, UTCDateTime, as_loaded, delete_due
from gateway.flows import sessions as sso
from gateway.flows.routes import (
    KIND_ACCOUNT,
    KIND_EXTERNAL,
    IdentityRoute,
    SecondFactor,
    acceptable,
    get_registry,
)
from gateway.flows.types import (
    AuthnError,
    AuthnResult,
    ErrorCode,
    RouteIdentity,
    RpProtocol,
    RpRequest,
)
from gateway.levels import Level
from gateway.policy import Policies
from gateway.settings import Settings

log = logging.getLogger(__name__)

#: A login flow lives this long from its start, like DigiD's 15 minutes of inactivity; a
#: person who takes longer starts again from the relying party.
FLOW_LIFETIME = timedelta(minutes=15)
#: Flow ids: 32 random bytes, base64url (they appear in URLs, so they are unguessable too).
FLOW_ID_BYTES = 32
_FLOW_ID = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")
#: Flows this browser session may finish (newest last); older ones fall off.
SESSION_FLOWS_KEY = "login_flows"
MAX_SESSION_FLOWS = 8


class FlowState(StrEnum):
    STARTED = "started"
    CHOOSE_ROUTE = "choose_route"
    PASSWORD = "password"  # noqa: S105 - a state name
    CHOOSE_FACTOR = "choose_factor"
    SECOND_FACTOR = "second_factor"
    #: An external route sent the browser to its identity provider; the answer comes back
    #: through the route's own blueprint (complete_external / fail_external).
    EXTERNAL = "external"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


S = FlowState
#: The allowed moves; anything else is refused by `transition`.
TRANSITIONS: Mapping[FlowState, frozenset[FlowState]] = {
    S.STARTED: frozenset(
        {S.CHOOSE_ROUTE, S.PASSWORD, S.CHOOSE_FACTOR, S.SECOND_FACTOR, S.DONE, S.FAILED,
         S.EXPIRED}
    ),
    S.CHOOSE_ROUTE: frozenset({S.PASSWORD, S.EXTERNAL, S.FAILED, S.EXPIRED}),
    # Back to choose_route: "choose another way" while nothing came back.
    S.EXTERNAL: frozenset({S.DONE, S.FAILED, S.EXPIRED, S.CHOOSE_ROUTE}),
    S.PASSWORD: frozenset({S.CHOOSE_FACTOR, S.SECOND_FACTOR, S.DONE, S.FAILED, S.EXPIRED}),
    S.CHOOSE_FACTOR: frozenset({S.SECOND_FACTOR, S.FAILED, S.EXPIRED}),
    S.SECOND_FACTOR: frozenset({S.CHOOSE_FACTOR, S.DONE, S.FAILED, S.EXPIRED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
}
FINAL_STATES = frozenset(state for state, moves in TRANSITIONS.items() if not moves)


class FlowError(Exception):
    """Base of the flow's own errors."""


class IllegalTransition(FlowError):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"login flow cannot move from {current} to {target}")
        self.current = current
        self.target = target


class FlowExpired(FlowError):
    """The flow is past its lifetime; it is now in `expired`."""


class LoginError(FlowError):
    """`finish()` has no result to give; `error` says why, for the relying party's answer
    (None when the flow is unknown or not this browser's, so there is nobody to answer)."""

    def __init__(self, error: AuthnError | None, reason: str) -> None:
        super().__init__(reason)
        self.error = error


class LoginFlow(Base):
    __tablename__ = "login_flows"
    # Every lookup is by primary key; expires_at serves the purge.
    __table_args__ = (sa.Index("ix_login_flows_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(sa.String(43), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rp_id: Mapped[str] = mapped_column(sa.String(200))
    #: The relying party's request (`RpRequest.to_json`).
    rp_request: Mapped[str] = mapped_column(sa.Text)
    #: The level this flow logs in at (numeric, gateway.levels.Level).
    requested_level: Mapped[int] = mapped_column(sa.Integer)
    route: Mapped[str | None] = mapped_column(sa.String(40), default=None)
    account_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), default=None
    )
    #: Who logged in, per route ("eidas:<hex>"); None for a desk-account login, whose key
    #: is "account:<account_id>".
    subject_key: Mapped[str | None] = mapped_column(sa.String(80), default=None)
    #: The person's attributes from an external route, sealed (gateway.crypto, purpose
    #: ATTRIBUTES_PURPOSE) as a JSON object; None when there are none.
    attributes: Mapped[str | None] = mapped_column(sa.Text, default=None)
    #: True when the password step was skipped because an SSO session vouched for it.
    step_up: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    factor: Mapped[str | None] = mapped_column(sa.String(8), default=None)
    #: When the last SMS/voice code of this flow went out (None: none yet, or a new method).
    code_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    level_reached: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    #: JSON list of RFC 8176 method values proven in this flow (or reused from SSO).
    amr: Mapped[str] = mapped_column(sa.String(100), default="[]")
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    sso_session_id: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    error: Mapped[str | None] = mapped_column(sa.String(24), default=None)
    #: When `finish()` handed out the result; it is handed out once.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def flow_state(self) -> FlowState:
        return FlowState(self.state)

    @property
    def request(self) -> RpRequest:
        # Parsed once per loaded row (pages and views read it several times per request);
        # the cache is keyed by the stored JSON, so a changed row is parsed again.
        raw = self.rp_request
        cached = self.__dict__.get("_request_cache")
        if cached is None or cached[0] != raw:
            cached = (raw, _parsed_request(raw))
            self.__dict__["_request_cache"] = cached
        parsed: RpRequest = cached[1]
        return parsed

    @property
    def level(self) -> Level:
        return Level(self.requested_level)

    @property
    def amr_values(self) -> tuple[str, ...]:
        return tuple(json.loads(self.amr))


@functools.lru_cache(maxsize=256)
def _parsed_request(raw: str) -> RpRequest:
    """A stored request, parsed once across the flow's requests (each reads its row anew):
    keyed by the exact JSON, and an RpRequest is frozen (its state a read-only mapping)."""
    return RpRequest.from_json(raw)


# --- the state machine --------------------------------------------------------------------


def new_flow_id() -> str:
    return secrets.token_urlsafe(FLOW_ID_BYTES)


def create_flow(db: Session, rp_request: RpRequest, level: Level) -> LoginFlow:
    now = clock.now()
    values = {
        **_NEW_FLOW,
        "id": new_flow_id(),
        "state": FlowState.STARTED.value,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + FLOW_LIFETIME,
        "rp_id": rp_request.rp_id,
        "rp_request": rp_request.to_json(),
        "requested_level": int(level),
    }
    # One prebuilt INSERT in the session's transaction (see get_flow).
    _INSERT_FLOW.execute(db.connection(), values)
    return _flow_object(values)


def get_flow(db: Session, flow_id: object) -> LoginFlow | None:
    """The flow as stored now, read in the caller's transaction.

    Read with one prebuilt SELECT sent to the driver as compiled (`gateway.db.Prepared`),
    not through the ORM's identity map (every flow request reads its flow at least once;
    the ORM's load costs several times the SELECT). The object is not attached to the
    session: a flow changes only through `transition`/`update_flow`, which write at once and
    keep it current."""
    if not isinstance(flow_id, str) or not _FLOW_ID.match(flow_id):
        return None
    row = _GET_FLOW.execute(db.connection(), {"_id": flow_id}).first()
    if row is None:
        return None
    return _flow_object(row._asdict())


def is_expired(flow: LoginFlow, now: datetime | None = None) -> bool:
    return (now or clock.now()) >= flow.expires_at


def transition(db: Session, flow: LoginFlow, target: FlowState, **changes: Any) -> None:
    """Move `flow` to `target` (and set `changes` on it), or raise.

    IllegalTransition: the move is not in TRANSITIONS, or another request moved the flow
    first. FlowExpired: the flow is past its lifetime (it is moved to `expired`, which the
    caller commits). Runs in the caller's transaction.
    """
    current = flow.flow_state
    target = FlowState(target)
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current.value, target.value)
    now = clock.now()
    if target is not FlowState.EXPIRED and is_expired(flow, now):
        if FlowState.EXPIRED in TRANSITIONS[current]:
            _move(db, flow, current, FlowState.EXPIRED, now, {"error": ErrorCode.EXPIRED.value})
        raise FlowExpired("login flow expired")
    _move(db, flow, current, target, now, changes)


def _move(
    db: Session, flow: LoginFlow, current: FlowState, target: FlowState, now: datetime,
    changes: Mapping[str, Any],
) -> None:
    values = {**changes, "state": target.value, "updated_at": now}
    # In the session's transaction, one statement built and compiled once per set of
    # fields and sent to the driver (`gateway.db.Prepared`): the ORM's execution layer, and
    # building and compiling an UPDATE each time, cost more CPU than the UPDATE itself.
    moved = _move_statement(frozenset(changes)).execute(
        db.connection(), {**values, "_id": flow.id, "_from": current.value}
    )
    if moved.rowcount != 1:
        raise IllegalTransition(current.value, target.value)
    for name, value in values.items():
        # Committed values: the ORM must not write them a second time at flush.
        set_committed_value(flow, name, value)


_MOVES: dict[frozenset[str], Prepared] = {}
_FLOW_TABLE = cast(sa.Table, LoginFlow.__table__)
_GET_FLOW = Prepared(sa.select(_FLOW_TABLE).where(_FLOW_TABLE.c.id == sa.bindparam("_id")))


def _flow_object(values: Mapping[Any, Any]) -> LoginFlow:
    """A LoginFlow holding `values` (a whole row), outside any session."""
    return as_loaded(LoginFlow, values)


#: Every column of a new flow that create_flow does not set: its value at the start.
_NEW_FLOW: dict[str, Any] = {
    "route": None, "account_id": None, "subject_key": None, "attributes": None,
    "step_up": False, "factor": None, "code_sent_at": None, "level_reached": None,
    "amr": "[]", "auth_time": None, "sso_session_id": None, "error": None,
    "finished_at": None,
}
_INSERT_FLOW = Prepared(sa.insert(_FLOW_TABLE).values(
    {column.key: sa.bindparam(column.key) for column in _FLOW_TABLE.columns}
))
#: The result of a done flow is taken once: finished_at set only where it is still empty;
#: the row as it then is comes back.
_TAKE_RESULT = Prepared(
    sa.update(_FLOW_TABLE)
    .where(
        _FLOW_TABLE.c.id == sa.bindparam("_id"),
        _FLOW_TABLE.c.state == FlowState.DONE.value,
        _FLOW_TABLE.c.finished_at.is_(None),
    )
    .values(finished_at=sa.bindparam("_now"))
    .returning(*_FLOW_TABLE.columns)
)


def _move_statement(fields: frozenset[str]) -> Prepared:
    """UPDATE login_flows SET state, updated_at and `fields` WHERE id and the state it was
    in (the compare-and-set that makes every move happen once); built once per field set."""
    stmt = _MOVES.get(fields)
    if stmt is None:
        table = _FLOW_TABLE
        columns = table.columns
        if not fields <= set(columns.keys()) or {"id", "state", "updated_at"} & fields:
            raise ValueError(f"not a flow field one may set: {sorted(fields)}")
        stmt = Prepared(
            sa.update(table)
            .where(columns.id == sa.bindparam("_id"), columns.state == sa.bindparam("_from"))
            .values({name: sa.bindparam(name) for name in (*sorted(fields), "state",
                                                            "updated_at")})
        )
        _MOVES[fields] = stmt
    return stmt


def ensure_alive(db: Session, flow: LoginFlow) -> None:
    """FlowExpired (moving the flow to `expired`, which the caller commits) when the flow is
    past its lifetime: checked before a login writes anything else (an SSO session), so an
    expired flow leaves nothing behind."""
    if is_expired(flow) and flow.flow_state not in FINAL_STATES:
        transition(db, flow, FlowState.EXPIRED, error=ErrorCode.EXPIRED.value)
        raise FlowExpired("login flow expired")


def update_flow(db: Session, flow: LoginFlow, **changes: Any) -> None:
    """Change fields without moving the state (a factor resent, a method picked again)."""
    _move(db, flow, flow.flow_state, flow.flow_state, clock.now(), changes)


def fail(db: Session, flow: LoginFlow, code: ErrorCode) -> None:
    transition(db, flow, FlowState.FAILED, error=code.value)


def purge_flows(
    db: Session, older_than: timedelta = timedelta(days=1), *, limit: int | None = None
) -> int:
    """Delete flows that expired more than `older_than` ago and that no login code still
    kept refers to, at most `limit`, in the caller's transaction (`gateway purge`,
    gateway.purge, runs it from cron in batches)."""
    from gateway import purge  # gateway.purge imports this module

    return delete_due(db, LoginFlow.id, purge.login_flows_due(clock.now(), older_than),
                            limit)


# --- decisions ----------------------------------------------------------------------------


def sso_satisfies_freshness(row: sso.SsoSession, request: RpRequest, now: datetime) -> bool:
    """May this SSO session vouch for the person without asking again?"""
    if request.force_authn:
        return False
    return request.max_age is None or now - row.auth_time <= timedelta(seconds=request.max_age)


def sso_route(row: sso.SsoSession, request: RpRequest) -> IdentityRoute | None:
    """The route of an SSO session when it may vouch for `request`: an enabled route the
    relying party may use (the "self" pages: account routes only)."""
    route = get_registry().get(row.route)
    if route is None:
        return None
    if request.protocol is RpProtocol.SELF and request.rp_id == "self" and (
        route.kind != KIND_ACCOUNT
    ):
        return None
    return route


def begin(db: Session, settings: Settings, policies: Policies, flow: LoginFlow) -> None:
    """Decide the first move of a `started` flow (see the module docstring). A step-up that
    lands on the SMS/voice page sends nothing yet: the person asks for the code.

    An SSO session from an external route is reused when its level is enough; it is never
    stepped up with an account's factors (the person chooses a route again instead).
    """
    registry = get_registry()
    request = flow.request
    level = flow.level
    target = request.target(registry.reachable_levels(request))
    row = sso.current_sso(db, settings, policies.accounts.session)
    now = clock.now()
    if target is None:
        fail(db, flow, ErrorCode.LEVEL_UNAVAILABLE)
        return
    route = sso_route(row, request) if row is not None else None
    if row is not None and route is not None and sso_satisfies_freshness(row, request, now):
        if row.level >= int(level):
            reuse(db, flow, row)
            return
        account = db.get(Account, row.account_id) if row.account_id else None
        if (
            not request.passive and account is not None and route.kind == KIND_ACCOUNT
            and level in route.levels
        ):
            account_route = registry.account_route(route.name)
            # Step-up: the SSO session already proved the password; only the factor is new.
            if account_route.factors(db, settings, account):
                after_first_factor(
                    db, settings, policies, flow, account, step_up=True,
                    proven=row.amr_values,
                )
            elif request.essential:
                fail(db, flow, ErrorCode.LEVEL_UNAVAILABLE)
            else:
                reuse(db, flow, row)  # nothing more can be proven; the RP decides
            return
    if request.passive:
        fail(db, flow, ErrorCode.LOGIN_REQUIRED)
        return
    candidates = registry.routes_for(request, level)
    if not candidates:
        fail(db, flow, ErrorCode.LEVEL_UNAVAILABLE)
    elif len(candidates) == 1 and candidates[0].kind == KIND_ACCOUNT:
        transition(db, flow, FlowState.PASSWORD, route=candidates[0].name)
    else:
        # Also for a single external route: the person picks its options (a country).
        transition(db, flow, FlowState.CHOOSE_ROUTE)


def reuse(db: Session, flow: LoginFlow, row: sso.SsoSession) -> None:
    """Done without asking anything: the SSO session vouches (its level, methods and the
    time of the last real authentication go to the relying party unchanged)."""
    sso.use(row, flow.rp_id)
    transition(
        db, flow, FlowState.DONE, route=row.route, account_id=row.account_id,
        subject_key=row.subject_key, attributes=row.attributes,
        level_reached=row.level, amr=row.amr, auth_time=row.auth_time, sso_session_id=row.id,
    )
    if row.account_id is not None:
        # The owner's history lists every service reached, also through single sign-on.
        _record_history(db, row.account_id, flow, Level(row.level), "sso")


def choose_route(db: Session, flow: LoginFlow, name: str) -> IdentityRoute:
    """The person picked a route on the choose-route page: an account route goes on to the
    password page, an external one to `external` (the caller then calls its `start`).
    Refused (IllegalTransition) for a route this flow does not offer."""
    registry = get_registry()
    route = registry.get(name)
    if route is None or route not in registry.routes_for(flow.request, flow.level):
        raise IllegalTransition(flow.state, "route:" + str(name)[:40])
    if route.kind == KIND_EXTERNAL:
        transition(db, flow, FlowState.EXTERNAL, route=route.name)
    else:
        transition(db, flow, FlowState.PASSWORD, route=route.name)
    return route


def choose_again(db: Session, flow: LoginFlow) -> None:
    """"Choose another way" while an external route has not answered: back to choose_route.
    A late answer to the abandoned attempt then finds the flow no longer `external`."""
    if flow.flow_state is not FlowState.EXTERNAL:
        raise IllegalTransition(flow.state, FlowState.CHOOSE_ROUTE.value)
    transition(db, flow, FlowState.CHOOSE_ROUTE, route=None)


def after_first_factor(
    db: Session,
    settings: Settings,
    policies: Policies,
    flow: LoginFlow,
    account: Account,
    *,
    step_up: bool = False,
    proven: tuple[str, ...] = (),
    sending_at: datetime | None = None,
) -> SecondFactor | None:
    """After the password (or an SSO session that proved it): done when the password's
    level is enough, else on to the second factor.

    Returns the factor whose code must be sent now (SMS or voice), if any; `sending_at`
    given, the move also sets the flow's `code_sent_at` to it when it returns one (the
    caller sends the code in the same transaction, and sets it back if nothing went out).
    """
    amr = list(proven)
    if "pwd" not in amr:
        amr.append("pwd")
    amr_json = json.dumps(amr)
    route = get_registry().account_route(flow.route)
    if flow.level <= route.password_level:
        complete(db, settings, policies, flow, account=account, level=route.password_level,
                 amr=amr_json)
        return None
    factors = route.factors(db, settings, account)
    common = {"account_id": account.id, "route": route.name, "amr": amr_json,
              "step_up": step_up}
    if not factors:
        if flow.request.essential or flow.request.passive:
            fail(db, flow, ErrorCode.LEVEL_UNAVAILABLE)
            return None
        # Not essential: log in at what the password reaches; the relying party decides.
        complete(db, settings, policies, flow, account=account, level=route.password_level,
                 amr=amr_json)
        return None
    if len(factors) == 1:
        send = factors[0] if factors[0] is not SecondFactor.TOTP else None
        if send is not None and sending_at is not None:
            common["code_sent_at"] = sending_at
        transition(db, flow, FlowState.SECOND_FACTOR, factor=factors[0].value, **common)
        return send
    transition(db, flow, FlowState.CHOOSE_FACTOR, factor=None, **common)
    return None


def choose_factor(
    db: Session, settings: Settings, flow: LoginFlow, account: Account, factor: str
) -> SecondFactor:
    """The person picked a method (from choose_factor, or "another method" from the code
    page). Refused when the account cannot use it."""
    route = get_registry().account_route(flow.route)
    available = route.factors(db, settings, account)
    try:
        chosen = SecondFactor(factor)
    except ValueError:
        raise IllegalTransition(flow.state, "factor:?") from None
    if chosen not in available:
        raise IllegalTransition(flow.state, "factor:" + chosen.value)
    if flow.flow_state is FlowState.SECOND_FACTOR:
        transition(db, flow, FlowState.CHOOSE_FACTOR, factor=None)
    transition(db, flow, FlowState.SECOND_FACTOR, factor=chosen.value, code_sent_at=None)
    return chosen


def second_factor_done(
    db: Session, settings: Settings, policies: Policies, flow: LoginFlow, account: Account
) -> None:
    factor = SecondFactor(flow.factor or "")
    amr = list(flow.amr_values)
    if factor.amr not in amr:
        amr.append(factor.amr)
    complete(db, settings, policies, flow, account=account, level=Level.MIDDEN,
             amr=json.dumps(amr))


def complete(
    db: Session,
    settings: Settings,
    policies: Policies,
    flow: LoginFlow,
    *,
    account: Account,
    level: Level,
    amr: str,
) -> None:
    """Move to `done` and record the login in this browser's SSO session (a new one, or
    the same person's raised). The relying party gets what THIS flow proved (its level,
    methods and time), not more. The caller regenerates the Flask session id."""
    route = get_registry().account_route(flow.route)
    ensure_alive(db, flow)
    now = clock.now()
    existing = sso.current_sso(db, settings, policies.accounts.session)
    row = sso.establish(
        db, settings, existing=existing, account_id=account.id,
        subject_key=route.subject_key(account), route=route.name, level=level,
        amr=tuple(json.loads(amr)), auth_time=now, rp_id=flow.rp_id,
    )
    db.flush()
    transition(
        db, flow, FlowState.DONE, account_id=account.id, route=route.name,
        level_reached=int(level), amr=amr, auth_time=now, sso_session_id=row.id,
    )
    method = flow.factor if level > route.password_level and flow.factor else "password"
    _record_history(db, account.id, flow, level, method)


#: gateway.crypto purpose of the sealed attributes in flow and SSO rows.
ATTRIBUTES_PURPOSE = "login-attributes"


def seal_attributes(settings: Settings, attributes: Mapping[str, str]) -> str | None:
    """The attributes sealed for a flow or SSO row (None when there are none)."""
    if not attributes:
        return None
    return seal(settings, ATTRIBUTES_PURPOSE, json.dumps(dict(attributes), sort_keys=True))


def open_attributes(settings: Settings, sealed: str | None) -> dict[str, str]:
    """The attributes of a flow or SSO row; SealError when they cannot be opened."""
    if not sealed:
        return {}
    data = json.loads(unseal(settings, ATTRIBUTES_PURPOSE, sealed))
    if not isinstance(data, dict):
        raise SealError("sealed attributes are not an object")
    return {str(k): str(v) for k, v in data.items()}


def complete_external(
    db: Session,
    settings: Settings,
    policies: Policies,
    flow: LoginFlow,
    identity: RouteIdentity,
) -> None:
    """An external route's identity provider vouched for the person: establish (or replace)
    this browser's SSO session and move the flow to `done`, keeping the subject key and the
    sealed attributes on the flow row for `finish()`.

    IllegalTransition when the flow is not `external` (a late or second answer) or
    `identity` comes from another route than the flow's; FlowExpired past the flow's
    lifetime. A level below the flow's, one the request does not accept, or one the route
    cannot reach fails the flow (`level_unavailable`) and returns: the relying party gets
    its error. The caller commits, regenerates the session id and redirects to
    `url_for("login.flow", flow_id=flow.id)`.
    """
    if flow.flow_state is not FlowState.EXTERNAL:
        raise IllegalTransition(flow.state, FlowState.DONE.value)
    route = get_registry().get(flow.route)
    if route is None or route.kind != KIND_EXTERNAL:
        raise IllegalTransition(flow.state, "route:" + str(flow.route)[:40])
    ensure_alive(db, flow)
    level = identity.level
    if level not in route.levels or not acceptable(flow.request, flow.level, level):
        log.info("external login at %s refused for a flow at %s", level.label, flow.level.label)
        fail(db, flow, ErrorCode.LEVEL_UNAVAILABLE)
        return
    now = clock.now()
    # The provider's clock may run ahead of ours; a login is never in the future.
    auth_time = min(identity.auth_time or now, now)
    sealed = seal_attributes(settings, identity.attributes)
    amr_json = json.dumps(list(identity.amr))
    existing = sso.current_sso(db, settings, policies.accounts.session)
    row = sso.establish(
        db, settings, existing=existing, account_id=identity.account_id,
        subject_key=identity.subject_key, route=route.name, level=level, amr=identity.amr,
        auth_time=auth_time, attributes=sealed, rp_id=flow.rp_id,
    )
    db.flush()
    transition(
        db, flow, FlowState.DONE, route=route.name, account_id=identity.account_id,
        subject_key=identity.subject_key, attributes=sealed, level_reached=int(level),
        amr=amr_json, auth_time=auth_time, sso_session_id=row.id,
    )
    if identity.account_id is not None:
        _record_history(db, identity.account_id, flow, level, route.name)


def fail_external(db: Session, flow: LoginFlow, code: ErrorCode) -> None:
    """The external route's identity provider answered with an error: `cancelled` when the
    person stopped there, `failed` otherwise. IllegalTransition when the flow is not
    `external`. The route then shows its own page with a button to `resume_location(flow)`
    (or redirects there); the relying party gets its protocol's error."""
    if flow.flow_state is not FlowState.EXTERNAL:
        raise IllegalTransition(flow.state, FlowState.FAILED.value)
    fail(db, flow, ErrorCode(code))


def _record_history(
    db: Session, account_id: str, flow: LoginFlow, level: Level, method: str
) -> None:
    """Usage history (issue 5 item 7): the service, the level and how the person logged in."""
    try:
        from gateway.accounts.history import EventKind, record_event
    except ImportError:  # pragma: no cover - the history module is part of the same issue
        return
    record_event(db, account_id, EventKind.LOGIN, service=flow.request.rp_id, level=level.label,
                 route=method)


# --- the API for protocol modules ----------------------------------------------------------


def reuse_at_once(
    db: Session, settings: Settings, policies: Policies, rp_request: RpRequest
) -> AuthnResult | None:
    """Single sign-on without a flow (issue 6, "Performance"; used by the OIDC authorization
    endpoint): when this browser's SSO session plainly vouches for `rp_request` without
    asking anything, the result that `start_login` -> `begin` (reuse) -> `finish` would
    hand out, at once: no flow row, no redirect hop, one statement instead of ORM loads.

    Only that clear case is decided here, with the same tests as `begin` and
    `sso.current_sso`; None for anything else (no session or an unusable one, a level it
    does not reach, force_authn, max_age, a route the request may not use, attributes that
    cannot be opened): the caller then starts a normal flow, and `begin` decides with the
    full rules (and ends a session that expired).

    One UPDATE takes the session's use (as `sso.use`) and reads it back with its account's
    status: only a session that has not ended or expired (the idle and absolute limits of
    `sso.expiry_reason`, as bounds on its timestamps) is touched; one that then turns out
    not to fit this request (a level too low, max_age, its account blocked) was still used
    by this browser, which `begin` will do again. The owner's usage history (as `reuse`)
    goes into the same transaction; the caller commits.
    """
    target = rp_request.target(get_registry().reachable_levels(rp_request))
    token = flask_session.get(sso.SESSION_KEY)
    if target is None or not isinstance(token, str) or len(token) > 100:
        return None
    # Statements built once (`_reuse_statements`), on the session's connection: the ORM's
    # execution layer and building them per call cost more CPU than the queries.
    take, remember = _reuse_statements()
    conn = db.connection()
    now = clock.now()
    policy = policies.accounts.session
    # A row with the session's columns and its account's status, blocked_until and
    # suspended_at: it
    # answers the same attribute reads as the ORM objects the helpers below take.
    row: Any = take.execute(conn, {
        "sso_id": sso.token_id(settings, token), "now": now,
        "idle_from": now - sso._idle(policy), "absolute_from": now - sso._absolute(policy),
    }).one_or_none()
    if (
        row is None
        or (row.account_id is not None and not sso._account_usable(row, now))
        or sso_route(row, rp_request) is None
        or not sso_satisfies_freshness(row, rp_request, now)
        or row.level < int(target)
    ):
        return None
    try:
        attributes = open_attributes(settings, row.attributes)
    except SealError:
        return None
    rps = list(json.loads(row.rps))
    if rp_request.rp_id not in rps and len(rps) < sso.MAX_RPS:
        rps.append(rp_request.rp_id)
        remember.execute(conn, {"sso_id": row.id, "rps": json.dumps(rps)})
    if row.account_id is not None:
        from gateway.accounts import history

        history.insert_event(conn, row.account_id, history.EventKind.LOGIN,
                             service=rp_request.rp_id, level=Level(row.level).label, route="sso")
    return AuthnResult(
        subject_key=row.subject_key or f"account:{row.account_id}",
        account_id=row.account_id,
        route=row.route,
        level=Level(row.level),
        amr=tuple(json.loads(row.amr)),
        auth_time=row.auth_time,
        sso_session_id=row.id,
        attributes=attributes,
    )


_REUSE_STATEMENTS: list[tuple[Prepared, Prepared]] = []


def _reuse_statements() -> tuple[Prepared, Prepared]:
    """`reuse_at_once`'s statements, built at its first call and sent to the driver as
    compiled (`gateway.db.Prepared`): the use of a session still open, returning it with its
    account's status (scalar subqueries: the session may have no account); and the relying
    parties it served."""
    if _REUSE_STATEMENTS:
        return _REUSE_STATEMENTS[0]
    sessions_t = cast(sa.Table, sso.SsoSession.__table__)
    accounts_t = cast(sa.Table, Account.__table__)

    def of_account(column: sa.Column[Any]) -> sa.ScalarSelect[Any]:
        return (
            sa.select(column).where(accounts_t.c.id == sessions_t.c.account_id)
            .scalar_subquery().label(column.key)  # type: ignore[return-value]
        )

    take = (
        sa.update(sessions_t)
        .where(
            sessions_t.c.id == sa.bindparam("sso_id"),
            sessions_t.c.ended_at.is_(None),
            sessions_t.c.last_seen_at > sa.bindparam("idle_from", type_=UTCDateTime()),
            sessions_t.c.created_at > sa.bindparam("absolute_from", type_=UTCDateTime()),
        )
        .values(last_seen_at=sa.bindparam("now", type_=UTCDateTime()))
        .returning(*sessions_t.c, of_account(accounts_t.c.status),
                   of_account(accounts_t.c.blocked_until),
                   of_account(accounts_t.c.suspended_at))
    )
    remember = (
        sa.update(sessions_t)
        .where(sessions_t.c.id == sa.bindparam("sso_id"))
        .values(rps=sa.bindparam("rps"))
    )
    _REUSE_STATEMENTS.append((Prepared(take), Prepared(remember)))
    return _REUSE_STATEMENTS[0]


def start_login(rp_request: RpRequest) -> BaseResponse:
    """Start a login for `rp_request` in this browser; returns the redirect into the flow.

    The level is chosen here (`RpRequest.target`); a request no route can serve still gets a
    flow, which ends `failed` with `level_unavailable` so the person is told why.
    """
    from gateway import db as database

    target = rp_request.target(get_registry().reachable_levels(rp_request)) or rp_request.minimum
    s = database.session()
    flow = create_flow(s, rp_request, target)
    s.commit()
    bind_to_browser(flow.id)
    return redirect(url_for("login.flow", flow_id=flow.id), code=303)


def bind_to_browser(flow_id: str) -> None:
    flows = [f for f in flask_session.get(SESSION_FLOWS_KEY, []) if isinstance(f, str)]
    flows = [f for f in flows if f != flow_id][-(MAX_SESSION_FLOWS - 1):]
    flows.append(flow_id)
    flask_session[SESSION_FLOWS_KEY] = flows


def bound_to_browser(flow_id: str) -> bool:
    flows = flask_session.get(SESSION_FLOWS_KEY, [])
    return isinstance(flows, list) and any(
        isinstance(f, str) and secrets.compare_digest(f, flow_id) for f in flows
    )


def resume_location(flow: LoginFlow) -> str:
    """The relying party's resume URL with `flow=<id>` added to its query."""
    parts = urlsplit(flow.request.resume_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "flow"]
    query.append(("flow", flow.id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def finish(flow_id: str) -> AuthnResult:
    """The result of a finished flow, handed out once to the browser that started it.

    Raises LoginError: with `.error` set when the flow ended without a login (failed or
    expired) or is not finished; with `.error` None when the flow is unknown, not this
    browser's, or its result was already taken.
    """
    from gateway import db as database

    if not isinstance(flow_id, str) or not _FLOW_ID.match(flow_id) or not bound_to_browser(
        flow_id
    ):
        raise LoginError(None, "unknown login flow")
    s = database.session()
    # The usual case in one statement: a done flow whose result is still there is taken,
    # and the UPDATE returns the row. Anything else is read to tell why not.
    taken = _TAKE_RESULT.execute(s.connection(), {"_id": flow_id, "_now": clock.now()}).first()
    if taken is None:
        _refuse_finish(s, flow_id)
    s.commit()
    flow = _flow_object(taken._asdict())
    request = flow.request
    assert flow.level_reached is not None and flow.auth_time is not None and flow.route
    try:
        attributes = open_attributes(_settings(), flow.attributes)
    except SealError:
        # Sealed under another secret key (rotated mid-login): no login without them.
        log.warning("login flow attributes cannot be opened")
        raise LoginError(AuthnError(ErrorCode.FAILED, request), "attributes unreadable") from None
    return AuthnResult(
        subject_key=flow.subject_key or f"account:{flow.account_id}",
        account_id=flow.account_id,
        route=flow.route,
        level=Level(flow.level_reached),
        amr=flow.amr_values,
        auth_time=flow.auth_time,
        sso_session_id=flow.sso_session_id,
        attributes=attributes,
    )


def _refuse_finish(s: Session, flow_id: str) -> NoReturn:
    """Why `finish` has no result for a flow of this browser: raises LoginError."""
    flow = get_flow(s, flow_id)
    if flow is None:
        raise LoginError(None, "unknown login flow")
    state = flow.flow_state
    if state is FlowState.DONE:
        raise LoginError(None, "login result already taken")
    if state not in FINAL_STATES and is_expired(flow):
        with contextlib.suppress(IllegalTransition):
            transition(s, flow, FlowState.EXPIRED, error=ErrorCode.EXPIRED.value)
        s.commit()
        state = flow.flow_state
    code = ErrorCode(flow.error) if state in FINAL_STATES and flow.error else ErrorCode.FAILED
    raise LoginError(AuthnError(code, flow.request), f"login flow is {state.value}")


def _settings() -> Settings:
    from gateway.app import get_settings

    return get_settings()
