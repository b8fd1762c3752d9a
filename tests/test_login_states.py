"""The login flow's state machine and its rules (issue 5 item 3, "Bad input and abuse"):
every transition class allowed or refused, expiry, parallel moves, the neutral types, codes
that are replayed, expired or from another flow, passive and essential requests, and
`finish` handing a result out once, to the browser that started the flow only.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from gateway import clock
from gateway.db import get_db
from gateway.flows.login import (
    FINAL_STATES,
    FLOW_LIFETIME,
    TRANSITIONS,
    FlowExpired,
    FlowState,
    IllegalTransition,
    LoginFlow,
    create_flow,
    get_flow,
    transition,
)
from gateway.flows.types import AuthnResult, RpRequest, RpRequestError
from gateway.levels import Level
from tests.test_login_flow import (
    login_password,
    make_account,
    outbox,
    post_form,
    rp_app,
    token,
)

REQUEST = RpRequest(
    rp_id="portal", protocol="oidc", levels=(Level.BASIS,), resume_url="/test-rp/back"
)


def _flow(app: Flask, state: FlowState) -> str:
    """A flow put straight into `state` (the state machine is tested, not the way there)."""
    with get_db(app).begin() as s:
        flow = create_flow(s, REQUEST, Level.BASIS)
        force_flow(s, flow, state=state.value)
        return flow.id


def force_flow(s: Any, flow: Any, **values: Any) -> None:
    """Write `values` into a flow row as they are (test set-up, past the state machine)."""
    s.execute(sa.update(LoginFlow).where(LoginFlow.id == flow.id).values(**values))
    for name, value in values.items():
        flow.__dict__[name] = value


def _pairs(kind: str) -> list[tuple[FlowState, FlowState]]:
    pairs = list(itertools.product(FlowState, FlowState))
    allowed = [(a, b) for a, b in pairs if b in TRANSITIONS[a]]
    if kind == "allowed":
        return allowed
    refused = [(a, b) for a, b in pairs if (a, b) not in allowed]
    if kind == "out_of_final":
        return [(a, b) for a, b in refused if a in FINAL_STATES]
    rest = [(a, b) for a, b in refused if a not in FINAL_STATES]
    if kind == "back_to_start":
        return [(a, b) for a, b in rest if b is FlowState.STARTED]
    rest = [(a, b) for a, b in rest if b is not FlowState.STARTED]
    if kind == "standing_still":
        return [(a, b) for a, b in rest if a is b]
    rest = [(a, b) for a, b in rest if a is not b]
    if kind == "skipping_the_password":
        return [(a, b) for a, b in rest if a is FlowState.CHOOSE_ROUTE]
    assert kind == "going_back"
    return [(a, b) for a, b in rest if a is not FlowState.CHOOSE_ROUTE]


TRANSITION_CLASSES = [
    "allowed", "out_of_final", "back_to_start", "standing_still", "skipping_the_password",
    "going_back",
]


def test_the_transition_classes_cover_every_pair() -> None:
    covered = [pair for kind in TRANSITION_CLASSES for pair in _pairs(kind)]
    assert sorted(covered) == sorted(itertools.product(FlowState, FlowState))
    assert all(_pairs(kind) for kind in TRANSITION_CLASSES)


@pytest.mark.parametrize("kind", TRANSITION_CLASSES)
def test_each_transition_class_is_allowed_or_refused(app: Flask, kind: str) -> None:
    """One test per class of transition; every pair of the class is tried on a stored flow."""
    for source, target in _pairs(kind):
        flow_id = _flow(app, source)
        with get_db(app).begin() as s:
            flow = get_flow(s, flow_id)
            assert flow is not None
            if kind == "allowed":
                transition(s, flow, target)
                assert flow.state == target.value
            else:
                with pytest.raises(IllegalTransition):
                    transition(s, flow, target)
        with get_db(app).begin() as s:
            stored = s.get(LoginFlow, flow_id)
            assert stored is not None
            expected = target if kind == "allowed" else source
            assert stored.state == expected.value, (source, target)


def test_the_table_has_the_shape_of_the_diagram() -> None:
    assert {FlowState.DONE, FlowState.FAILED, FlowState.EXPIRED} == FINAL_STATES
    for state in set(FlowState) - FINAL_STATES:
        # Every state that is not final can fail or expire ...
        assert {FlowState.FAILED, FlowState.EXPIRED} <= TRANSITIONS[state]
        # ... and none goes back to the start.
        assert FlowState.STARTED not in TRANSITIONS[state]
    # The password is never skipped on the way from choosing a route.
    assert TRANSITIONS[FlowState.CHOOSE_ROUTE] & {FlowState.DONE, FlowState.SECOND_FACTOR} == set()


def test_an_expired_flow_moves_to_expired_only(app: Flask, frozen_clock: None) -> None:
    flow_id = _flow(app, FlowState.PASSWORD)
    clock.advance(FLOW_LIFETIME)
    with get_db(app).begin() as s:
        flow = get_flow(s, flow_id)
        assert flow is not None
        with pytest.raises(FlowExpired):
            transition(s, flow, FlowState.DONE)
    with get_db(app).begin() as s:
        stored = s.get(LoginFlow, flow_id)
        assert stored is not None
        assert stored.state == FlowState.EXPIRED.value and stored.error == "expired"


def test_two_parallel_moves_of_one_flow_cannot_both_win(app: Flask) -> None:
    flow_id = _flow(app, FlowState.PASSWORD)
    db = get_db(app)
    with db.sessionmaker() as first, db.sessionmaker() as second:
        a = get_flow(first, flow_id)
        first.commit()
        b = get_flow(second, flow_id)
        second.commit()  # both read `password`
        assert a is not None and b is not None
        transition(first, a, FlowState.DONE)
        first.commit()
        with pytest.raises(IllegalTransition):
            transition(second, b, FlowState.SECOND_FACTOR)
        second.rollback()
    with db.begin() as s:
        stored = s.get(LoginFlow, flow_id)
        assert stored is not None and stored.state == FlowState.DONE.value


def test_only_flow_fields_can_be_set(app: Flask) -> None:
    flow_id = _flow(app, FlowState.PASSWORD)
    with get_db(app).begin() as s:
        flow = get_flow(s, flow_id)
        assert flow is not None
        with pytest.raises(ValueError, match="not a flow field"):
            transition(s, flow, FlowState.DONE, is_admin=True)
        with pytest.raises(ValueError):
            transition(s, flow, FlowState.DONE, state="done")


def test_malformed_flow_ids_are_never_looked_up(app: Flask) -> None:
    with get_db(app).begin() as s:
        for flow_id in ["", "x", "a" * 44, "../../etc/passwd", None, 42, "é" * 43, "a\x00" * 20]:
            assert get_flow(s, flow_id) is None


# --- the neutral types ------------------------------------------------------------------------


def test_rp_request_round_trips_through_json() -> None:
    request = RpRequest.at_least(
        Level.MIDDEN, rp_id="urn:rp:belasting", protocol="saml",
        resume_url="https://gw.example/saml/resume?x=1", essential=True, force_authn=True,
        passive=False, max_age=600, login_hint="jan", ui_locale="en",
        state={"request_id": "_abc", "relay_state": "äöü", "n": [1, 2]},
        return_origin="https://sp.example.org/acs?x=1",
    )
    again = RpRequest.from_json(request.to_json())
    assert again == request
    assert again.levels == (Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG)
    assert again.minimum is Level.MIDDEN
    assert again.return_origin == "https://sp.example.org"
    with pytest.raises(TypeError):
        again.state["request_id"] = "changed"  # type: ignore[index]


@pytest.mark.parametrize(
    "changes",
    [
        {"rp_id": ""},
        {"rp_id": "x" * 201},
        {"levels": ()},
        {"levels": (Level.BASIS, Level.BASIS)},
        {"levels": ("platinum",)},
        {"levels": (True,)},
        {"protocol": "ws-fed"},
        {"resume_url": ""},
        {"max_age": -1},
        {"max_age": "60"},
        {"state": {"x": object()}},
        {"state": {"big": "x" * 20000}},
        {"return_origin": "javascript:alert(1)"},
        {"return_origin": "https://user@evil.example"},
    ],
)
def test_rp_request_refuses_what_it_cannot_honour(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "rp_id": "rp", "protocol": "oidc", "levels": (Level.BASIS,), "resume_url": "/r",
    }
    with pytest.raises((RpRequestError, ValueError)):
        RpRequest(**{**fields, **changes})


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"rp_id": 1}', "null", "{" * 1000])
def test_rp_request_from_hostile_json(text: str) -> None:
    with pytest.raises(RpRequestError):
        RpRequest.from_json(text)


def test_target_level_follows_preference_and_essential() -> None:
    reachable = frozenset({Level.BASIS, Level.MIDDEN})
    base: dict[str, Any] = {"rp_id": "rp", "protocol": "oidc", "resume_url": "/r"}
    assert RpRequest(levels=(Level.MIDDEN, Level.BASIS), **base).target(reachable) is Level.MIDDEN
    assert RpRequest.at_least(Level.BASIS, **base).target(reachable) is Level.BASIS
    hoog = RpRequest(levels=(Level.HOOG,), **base)
    assert hoog.target(reachable) is Level.MIDDEN  # not essential: the best there is
    assert RpRequest(levels=(Level.HOOG,), essential=True, **base).target(reachable) is None


def test_authn_result_round_trips_and_checks_amr() -> None:
    result = AuthnResult(
        subject_key="account:1", account_id="1", route="desk_account", level=Level.MIDDEN,
        amr=("pwd", "sms"), auth_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        sso_session_id="ab" * 32, attributes={"k": "v"},
    )
    assert AuthnResult.from_json(result.to_json()) == result
    assert json.loads(result.to_json())["level"] == "midden"
    with pytest.raises(ValueError):
        AuthnResult(**{**result.__dict__, "amr": ("pwd", "face")})
    with pytest.raises(ValueError):
        AuthnResult(**{**result.__dict__, "auth_time": datetime(2026, 1, 1)})


# --- through the pages --------------------------------------------------------------------


def test_passive_without_a_session_answers_login_required(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    answer = client.get("/test-rp/start?passive=1", follow_redirects=True)
    assert answer.get_json()["error"] == "login_required"
    assert all(r.status_code == 303 for r in answer.history)  # no page was shown


def test_essential_hoog_is_an_error_told_to_the_person(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    client.get("/?lang=en")
    page = client.get("/test-rp/start?levels=hoog&essential=1", follow_redirects=True)
    body = page.get_data(as_text=True)
    assert "You cannot log in to this service this way" in body
    assert "level hoog" in body and 'name="password"' not in body
    back = client.get(page.request.path, follow_redirects=False)
    assert back.status_code == 200  # the page stays; the person follows the link
    link = body.split('class="button" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    answer = client.get(link)
    assert answer.get_json()["error"] == "level_unavailable"


def test_hoog_not_essential_logs_in_at_midden(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/test-rp/start?levels=hoog", follow_redirects=True)
    page = login_password(client, page)
    from tests.test_login_flow import last_code

    answer = post_form(client, page, "/code", {"code": last_code(app)})
    assert answer.get_json()["level"] == "midden"


def test_cancel_answers_cancelled(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    page = client.get("/test-rp/start", follow_redirects=True)
    answer = post_form(client, page, "/cancel", {})
    assert answer.get_json()["error"] == "cancelled"


def test_finish_gives_the_result_once_and_only_to_its_browser(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/test-rp/start", follow_redirects=True)
    done = post_form(client, page, "/password", {"username": "jan.jansen",
                                                 "password": "purple elephant dances"},
                     follow=False)
    back = done.headers["Location"]  # straight on to the relying party
    assert "/test-rp/back?flow=" in back, back
    # Another browser with the flow id (a leaked URL) gets nothing.
    thief = app.test_client()
    assert thief.get(back).get_json() == {"ok": False, "error": None, "state": None}
    assert client.get(back).get_json()["ok"] is True
    # Once only.
    assert client.get(back).get_json()["ok"] is False


def test_finish_before_the_flow_is_done_takes_nothing(make_app: Any) -> None:
    """The relying party's page opened while the flow is still at the password: an error,
    and the result stays to be taken once the flow is done."""
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = client.get("/test-rp/start", follow_redirects=True)
    flow_id = page.request.path.rsplit("/", 1)[-1]
    early = client.get(f"/test-rp/back?flow={flow_id}").get_json()
    assert early["ok"] is False and early["error"] == "failed"
    with get_db(app).begin() as s:
        flow = get_flow(s, flow_id)
        assert flow is not None and flow.finished_at is None
        assert flow.flow_state is FlowState.PASSWORD
    done = post_form(client, page, "/password", {"username": "jan.jansen",
                                                 "password": "purple elephant dances"},
                     follow=False)
    assert client.get(done.headers["Location"]).get_json()["ok"] is True
    assert client.get(done.headers["Location"]).get_json()["ok"] is False


def _to_code_page(app: Flask, client: Any) -> Any:
    client.get("/?lang=en")
    page = client.get("/test-rp/start?levels=midden", follow_redirects=True)
    return login_password(client, page)


def test_codes_replayed_expired_or_of_another_flow_are_refused(
    make_app: Any, frozen_clock: None
) -> None:
    from tests.test_login_flow import last_code

    app = rp_app(make_app)
    make_account(app)
    make_account(app, "piet.pietersen", phone="+31687654321")
    alice = app.test_client()
    page_a = _to_code_page(app, alice)
    code_a = last_code(app)

    # Another person's flow: code A is not B's code (bound to the flow id).
    bob = app.test_client()
    bob.get("/?lang=en")
    page = bob.get("/test-rp/start?levels=midden", follow_redirects=True)
    page_b = login_password(bob, page, "piet.pietersen")
    refused = post_form(bob, page_b, "/code", {"code": code_a})
    assert "This code is not correct" in refused.get_data(as_text=True)

    # Expired: the code lives 5 minutes (policies/sms.yaml).
    clock.advance(timedelta(minutes=6))
    refused = post_form(alice, page_a, "/code", {"code": code_a})
    assert refused.request.path.startswith("/login/")
    assert 'id="code"' in refused.get_data(as_text=True)
    # A new login's code works, once; replaying it in a forced re-login is refused. (A new
    # flow rather than "send a new code": the resend interval lives in Redis' real-time TTLs,
    # which the frozen clock does not move.)
    page = _to_code_page(app, alice)
    fresh = last_code(app)
    answer = post_form(alice, page, "/code", {"code": fresh})
    assert answer.get_json()["ok"] is True
    clock.advance(timedelta(seconds=31))
    page = alice.get("/test-rp/start?levels=midden&force=1", follow_redirects=True)
    page = login_password(alice, page)
    refused = post_form(alice, page, "/code", {"code": fresh})
    assert refused.request.path.startswith("/login/")
    assert len(outbox(app)) == 4


def test_hostile_code_input_is_refused_without_a_500(make_app: Any) -> None:
    app = rp_app(make_app)
    client = app.test_client()
    make_account(app)
    page = _to_code_page(app, client)
    for junk in ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "\x00" * 6, "9" * 5000]:
        refused = client.post(
            page.request.path + "/code", data={"csrf_token": token(page), "code": junk}
        )
        assert refused.status_code == 200
        assert 'aria-invalid="true"' in refused.get_data(as_text=True)
