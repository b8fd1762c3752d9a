"""External identity routes in the login flow (issue 8, item 1): the choose-route page, the
`external` state, `complete_external` and `fail_external`, single sign-on from an external
login, and the moves that must be refused (a late answer, a level below the request, an
answer for a flow that is not waiting).

A test-only external route ("fake", defined here and registered through a stand-in entry
point) plays the part eIDAS plays in production: its `start` sends the browser to a fake
identity provider page, its own blueprint takes the "answer" and ends the flow the way a real
route does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Blueprint, Flask, abort, redirect, request, url_for
from flask import session as flask_session
from flask.testing import FlaskClient
from jinja2 import ChoiceLoader, DictLoader
from werkzeug.test import TestResponse
from werkzeug.wrappers import Response as BaseResponse

from gateway import clock, db
from gateway.accounts.history import list_events
from gateway.app import get_policies, get_settings
from gateway.db import get_db
from gateway.flows import login as flows
from gateway.flows import routes
from gateway.flows.login import FlowState, LoginFlow
from gateway.flows.routes import RouteInputError, discover, get_registry
from gateway.flows.sessions import SsoSession
from gateway.flows.types import ErrorCode, RouteIdentity, RpRequest
from gateway.levels import Level
from gateway.settings import DEFAULT_POLICIES_DIR
from gateway.web import regenerate_session
from gateway.web.csrf import csrf_exempt
from tests.test_login_flow import (
    MOBILE,
    add_test_rp,
    last_code,
    login_password,
    make_account,
    post_form,
    sso_rows,
)
from tests.test_login_states import force_flow

SUBJECT = "fake:" + "ab" * 32
ATTRIBUTES = {"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1964-08-12",
              "country": "DE"}


class FakeRoute:
    """An external route for the tests: start -> /fake/idp; POST /fake/answer ends the flow."""

    name = "fake"
    label = "Test eID"
    levels = frozenset({Level.BASIS, Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG})
    kind = "external"
    choice_template = "fake/choice.html"

    def __init__(self) -> None:
        self.started: list[tuple[str, dict[str, str], Level]] = []
        self.config: Mapping[str, Any] = {}

    def configure(self, settings: Any, config: Mapping[str, Any]) -> None:
        self.config = config

    def init_app(self, app: Flask) -> None:
        templates = DictLoader({"fake/choice.html": (
            '<div class="field"><label class="label" for="fake-country">Country</label>'
            '<select class="input" id="fake-country" name="country" autocomplete="off">'
            '<option value="DE">Germany</option><option value="XX">Atlantis</option>'
            '<option value="BOOM">Broken</option></select></div>'
        )})
        app.jinja_env.loader = ChoiceLoader([templates, app.jinja_env.loader])  # type: ignore[list-item]
        app.register_blueprint(_fake_bp)

    def start(self, flow: LoginFlow, form: Mapping[str, str]) -> BaseResponse:
        country = form.get("country", "")
        level = routes.route_level(flow, self)
        self.started.append((flow.id, dict(form), level))
        # Something written before refusing: the flow must roll it back.
        flows.update_flow(db.session(), flow, subject_key="written-before-refusing")
        if country == "XX":
            raise RouteInputError("Choose a country from the list.")
        if country == "BOOM":
            raise RuntimeError("the identity provider's metadata cannot be fetched")
        flows.update_flow(db.session(), flow, subject_key=None)
        flask_session["fake_pending"] = flow.id  # the route's own binding, single use
        return redirect(url_for("fake._idp"), code=303)


_fake_bp = Blueprint("fake", __name__)


@_fake_bp.get("/fake/idp")
def _idp() -> Any:
    return "at the identity provider"


@_fake_bp.post("/fake/answer")
@csrf_exempt
def _answer() -> Any:
    """What a route's response endpoint does (the contract's last paragraph)."""
    s = db.session()
    flow = flows.get_flow(s, flask_session.pop("fake_pending", None))
    if (
        flow is None or not flows.bound_to_browser(flow.id)
        or flow.flow_state is not FlowState.EXTERNAL or flow.route != FakeRoute.name
    ):
        abort(409)
    form = request.form
    try:
        if form["outcome"] == "ok":
            identity = RouteIdentity(
                subject_key=form.get("subject", SUBJECT), level=Level.from_label(form["level"]),
                amr=("mfa",) if form["level"] != "midden" else (),
                attributes=json.loads(form.get("attributes", json.dumps(ATTRIBUTES))),
                account_id=form.get("account_id") or None,
            )
            flows.complete_external(s, get_settings(), get_policies(), flow, identity)
            s.commit()
            regenerate_session()
            return redirect(url_for("login.flow", flow_id=flow.id), code=303)
        flows.fail_external(s, flow, ErrorCode(form["outcome"]))
        s.commit()
        return redirect(flows.resume_location(flow), code=303)
    except flows.FlowExpired:
        s.commit()
        abort(410)


FAKE = FakeRoute()


class _Point:
    name = "fake"

    def load(self) -> FakeRoute:
        return FAKE


@pytest.fixture
def fake_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Policies with the fake route enabled after the desk account; yields the folder."""
    folder = tmp_path / "policies-fake"
    shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    shipped = yaml.safe_load((folder / "routes.yaml").read_text())["routes"]
    block = {name: {"enabled": False} for name in shipped}
    block["desk_account"] = {"enabled": True}
    block["fake"] = {"enabled": True, "greeting": "hello"}
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": block}, sort_keys=False))
    found = dict(discover())
    found["fake"] = _Point()
    monkeypatch.setattr(routes, "discover", lambda: found)
    FAKE.started.clear()
    yield folder


@pytest.fixture
def fapp(make_app: Any, fake_route: Path) -> Flask:
    app: Flask = make_app(policies_dir=fake_route)
    add_test_rp(app)
    return app


def _client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("gw_lang", "en")
    return client


def _start(client: FlaskClient, levels: str, **extra: str) -> TestResponse:
    query = "&".join(f"{k}={v}" for k, v in {"levels": levels, "lang": "en", **extra}.items())
    return client.get(f"/test-rp/start?{query}", follow_redirects=True)


def _flow_id(page: TestResponse) -> str:
    path = page.request.path
    assert path.startswith("/login/"), path
    return path.split("/")[2]


def _flow(app: Flask, flow_id: str) -> LoginFlow:
    with get_db(app).begin() as s:
        flow = s.get(LoginFlow, flow_id)
        assert flow is not None
        s.expunge(flow)
        return flow


def _choose_fake(client: FlaskClient, page: TestResponse, country: str = "DE") -> TestResponse:
    return post_form(client, page, "/route", {"route": "fake", "country": country})


def _answer(client: FlaskClient, **form: str) -> TestResponse:
    return client.post("/fake/answer", data=form, follow_redirects=True)


def _login_fake(
    client: FlaskClient, levels: str, level: str, **extra: str
) -> TestResponse:
    page = _start(client, levels, **extra)
    assert "Choose how to log in" in page.get_data(as_text=True)
    page = _choose_fake(client, page)
    assert page.get_data(as_text=True) == "at the identity provider"
    return _answer(client, outcome="ok", level=level)


# --- the choose-route page ------------------------------------------------------------------


def test_the_choice_page_offers_routes_with_their_own_fields(fapp: Flask) -> None:
    client = _client(fapp)
    page = _start(client, "midden,substantieel,hoog")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "Choose how to log in" in body
    # One form per route; the fake route's own select inside its form, in a fieldset.
    desk = body.index('value="desk_account"')
    form_start = body.index('id="route-fake"')
    assert desk < form_start
    fake_form = body[form_start:body.index("</form>", form_start)]
    assert "<fieldset" in fake_form and "<legend" in fake_form and "Test eID" in fake_form
    assert 'name="country"' in fake_form and 'autocomplete="off"' in fake_form
    assert '<label class="label" for="fake-country">' in fake_form
    assert 'name="route" value="fake"' in fake_form
    assert FAKE.config == {"greeting": "hello"}  # its block, without `enabled`


def test_only_an_external_route_still_shows_the_page(fapp: Flask) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel,hoog", essential="1")
    body = page.get_data(as_text=True)
    assert "Choose how to log in" in body
    assert 'value="fake"' in body and 'value="desk_account"' not in body
    assert _flow(fapp, _flow_id(page)).state == FlowState.CHOOSE_ROUTE.value


def test_the_self_pages_offer_the_account_only(fapp: Flask) -> None:
    make_account(fapp)
    client = _client(fapp)
    page = client.get("/account?lang=en", follow_redirects=True)
    body = page.get_data(as_text=True)
    assert 'name="password"' in body and 'value="fake"' not in body
    # ... and refuse the external route if someone posts it anyway.
    flow_id = _flow_id(page)
    with get_db(fapp).begin() as s:
        s.get(LoginFlow, flow_id).state = FlowState.CHOOSE_ROUTE.value  # type: ignore[union-attr]
    page = client.get(f"/login/{flow_id}")
    assert 'value="fake"' not in page.get_data(as_text=True)
    answer = post_form(client, page, "/route", {"route": "fake"}, follow=False)
    assert answer.status_code == 400
    assert _flow(fapp, flow_id).state == FlowState.CHOOSE_ROUTE.value


def test_a_route_the_request_cannot_use_is_refused(fapp: Flask) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel", essential="1")
    answer = post_form(client, page, "/route", {"route": "desk_account"}, follow=False)
    assert answer.status_code == 400
    answer = post_form(client, page, "/route", {"route": "no-such-route"}, follow=False)
    assert answer.status_code == 400
    assert _flow(fapp, _flow_id(page)).state == FlowState.CHOOSE_ROUTE.value
    assert FAKE.started == []


def test_the_desk_account_is_still_one_click_away(fapp: Flask) -> None:
    make_account(fapp)
    client = _client(fapp)
    page = _start(client, "midden")
    page = post_form(client, page, "/route", {"route": "desk_account"})
    page = login_password(client, page)
    page = post_form(client, page, "/code", {"action": "send"})
    page = post_form(client, page, "/code", {"action": "verify", "code": last_code(fapp, MOBILE)})
    result = page.get_json()
    assert result["ok"] is True and result["route"] == "desk_account"
    assert result["subject_key"] == f"account:{result['account_id']}"
    assert result["attributes"] == {}


# --- external -> done | failed | choose_route -----------------------------------------------


def test_external_login_hands_the_identity_to_the_relying_party(fapp: Flask) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel,hoog")
    flow_id = _flow_id(page)
    page = _choose_fake(client, page)
    assert page.get_data(as_text=True) == "at the identity provider"
    # start() saw the flow in `external`, the person's choice and the level to ask for.
    assert FAKE.started == [(flow_id, {"route": "fake", "country": "DE"}, Level.SUBSTANTIEEL)]
    assert _flow(fapp, flow_id).state == FlowState.EXTERNAL.value
    # Back at the login page while the provider is busy: where you are and a way out.
    waiting = client.get(f"/login/{flow_id}?lang=en")
    text = waiting.get_data(as_text=True)
    assert "To log in, we sent you on to: Test eID." in text
    assert "/again" in text and "/cancel" in text
    dutch = client.get(f"/login/{flow_id}?lang=nl").get_data(as_text=True)
    assert "Om in te loggen hebben we u doorgestuurd naar: Test eID." in dutch
    client.get(f"/login/{flow_id}?lang=en")

    before = client.get_cookie("gw_session")
    result = _answer(client, outcome="ok", level="substantieel").get_json()
    assert result["ok"] is True
    assert result["subject_key"] == SUBJECT and result["account_id"] is None
    assert result["route"] == "fake" and result["level"] == "substantieel"
    assert result["amr"] == ["mfa"] and result["attributes"] == ATTRIBUTES
    after = client.get_cookie("gw_session")
    assert before is not None and after is not None and before.value != after.value
    # The attributes rest sealed in the flow and SSO rows, never in the clear.
    flow = _flow(fapp, flow_id)
    assert flow.state == FlowState.DONE.value and flow.subject_key == SUBJECT
    (row,) = sso_rows(fapp)
    for sealed in (flow.attributes, row.attributes):
        assert sealed and "Mustermann" not in sealed
        assert flows.open_attributes(get_settings(fapp), sealed) == ATTRIBUTES
    assert row.subject_key == SUBJECT and row.route == "fake" and row.account_id is None
    assert row.level == Level.SUBSTANTIEEL
    # The result is handed out once.
    again = client.get(f"/test-rp/back?flow={flow_id}").get_json()
    assert again == {"ok": False, "error": None, "state": None}


@pytest.mark.parametrize("outcome", [ErrorCode.CANCELLED, ErrorCode.FAILED])
def test_an_error_from_the_provider_reaches_the_relying_party(
    fapp: Flask, outcome: ErrorCode
) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel")
    flow_id = _flow_id(page)
    _choose_fake(client, page)
    result = _answer(client, outcome=outcome.value).get_json()
    assert result == {"ok": False, "error": outcome.value, "state": {"nonce": "n-1"}}
    assert _flow(fapp, flow_id).state == FlowState.FAILED.value
    assert sso_rows(fapp) == []


def test_a_refused_choice_returns_to_the_page_and_rolls_back(fapp: Flask) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel")
    flow_id = _flow_id(page)
    page = _choose_fake(client, page, country="XX")
    body = page.get_data(as_text=True)
    assert page.status_code == 400
    assert "Choose a country from the list." in body and 'href="#route-fake"' in body
    assert 'id="route-fake-error"' in body
    flow = _flow(fapp, flow_id)
    assert flow.state == FlowState.CHOOSE_ROUTE.value and flow.route is None
    assert flow.subject_key is None  # what start() wrote before refusing is rolled back
    # The flow is still usable.
    page = _choose_fake(client, page)
    assert page.get_data(as_text=True) == "at the identity provider"


def test_a_route_that_fails_to_start_leaves_the_flow_usable(
    fapp: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel")
    flow_id = _flow_id(page)
    page = _choose_fake(client, page, country="BOOM")
    assert page.status_code == 503
    assert "not available at the moment" in page.get_data(as_text=True)
    assert "could not start" in caplog.text
    flow = _flow(fapp, flow_id)
    assert flow.state == FlowState.CHOOSE_ROUTE.value and flow.subject_key is None


def test_choosing_again_refuses_the_late_answer(fapp: Flask) -> None:
    client = _client(fapp)
    page = _start(client, "substantieel")
    flow_id = _flow_id(page)
    _choose_fake(client, page)
    waiting = client.get(f"/login/{flow_id}?lang=en")
    page = post_form(client, waiting, "/again", {})
    assert "Choose how to log in" in page.get_data(as_text=True)
    flow = _flow(fapp, flow_id)
    assert flow.state == FlowState.CHOOSE_ROUTE.value and flow.route is None
    # The provider's answer to the abandoned attempt arrives after all: refused.
    with fapp.test_request_context():
        flask_session["login_flows"] = [flow_id]
        s = db.session()
        flow = flows.get_flow(s, flow_id)
        assert flow is not None
        with pytest.raises(flows.IllegalTransition):
            flows.complete_external(
                s, get_settings(), get_policies(), flow,
                RouteIdentity(SUBJECT, Level.SUBSTANTIEEL, ("mfa",), ATTRIBUTES),
            )
        with pytest.raises(flows.IllegalTransition):
            flows.fail_external(s, flow, ErrorCode.FAILED)
        s.rollback()
    assert _flow(fapp, flow_id).state == FlowState.CHOOSE_ROUTE.value
    assert sso_rows(fapp) == []


@pytest.mark.parametrize("state", [
    FlowState.STARTED, FlowState.CHOOSE_ROUTE, FlowState.PASSWORD, FlowState.SECOND_FACTOR,
    FlowState.DONE, FlowState.FAILED, FlowState.EXPIRED,
])
def test_complete_external_needs_a_waiting_flow(fapp: Flask, state: FlowState) -> None:
    request_ = RpRequest(rp_id="rp", protocol="oidc", levels=(Level.SUBSTANTIEEL,),
                         resume_url="/test-rp/back")
    with fapp.test_request_context():
        s = db.session()
        flow = flows.create_flow(s, request_, Level.SUBSTANTIEEL)
        flows.update_flow(s, flow, route="fake")
        force_flow(s, flow, state=state.value)
        s.commit()
        with pytest.raises(flows.IllegalTransition):
            flows.complete_external(
                s, get_settings(), get_policies(), flow,
                RouteIdentity(SUBJECT, Level.SUBSTANTIEEL, ("mfa",), ATTRIBUTES),
            )
        s.rollback()
        assert flows.get_flow(s, flow.id).state == state.value  # type: ignore[union-attr]
        s.commit()
    assert sso_rows(fapp) == []


def test_complete_external_refuses_another_routes_flow(fapp: Flask) -> None:
    request_ = RpRequest(rp_id="rp", protocol="oidc", levels=(Level.MIDDEN,),
                         resume_url="/test-rp/back")
    with fapp.test_request_context():
        s = db.session()
        flow = flows.create_flow(s, request_, Level.MIDDEN)
        force_flow(s, flow, state=FlowState.EXTERNAL.value, route="desk_account")
        s.commit()
        with pytest.raises(flows.IllegalTransition):
            flows.complete_external(
                s, get_settings(), get_policies(), flow,
                RouteIdentity(SUBJECT, Level.MIDDEN, (), ATTRIBUTES),
            )
        s.rollback()
    assert sso_rows(fapp) == []


@pytest.mark.parametrize(("levels", "essential", "reached"), [
    ("substantieel,hoog", "1", "midden"),     # below the request
    ("substantieel", "0", "midden"),          # below the flow's level, even when not essential
    ("midden", "1", "hoog"),                  # essential and exact: not what was asked
])
def test_a_level_the_request_does_not_accept_fails_the_flow(
    fapp: Flask, levels: str, essential: str, reached: str
) -> None:
    client = _client(fapp)
    page = _start(client, levels, essential=essential)
    flow_id = _flow_id(page)
    if "desk_account" in page.get_data(as_text=True):
        assert levels == "midden"
    _choose_fake(client, page)
    page = _answer(client, outcome="ok", level=reached)
    # The person is told why, in their language, and sent back to the service.
    assert "You logged in with Test eID, but not at the assurance level this service asks for" \
        in page.get_data(as_text=True)
    dutch = client.get(f"/login/{flow_id}?lang=nl").get_data(as_text=True)
    assert "U hebt ingelogd met Test eID" in dutch
    client.get(f"/login/{flow_id}?lang=en")
    flow = _flow(fapp, flow_id)
    assert flow.state == FlowState.FAILED.value
    assert flow.error == ErrorCode.LEVEL_UNAVAILABLE.value
    assert flow.subject_key is None and flow.attributes is None
    assert sso_rows(fapp) == []
    # The relying party gets its error (through the page that explains it to the person).
    result = client.get(f"/test-rp/back?flow={flow_id}").get_json()
    assert result["ok"] is False and result["error"] == "level_unavailable"


def test_an_expired_flow_takes_no_answer(fapp: Flask) -> None:
    client = _client(fapp)
    with clock.frozen():
        page = _start(client, "substantieel")
        flow_id = _flow_id(page)
        _choose_fake(client, page)
        clock.advance(flows.FLOW_LIFETIME + timedelta(seconds=1))
        with fapp.test_request_context():
            flask_session["login_flows"] = [flow_id]
            s = db.session()
            flow = flows.get_flow(s, flow_id)
            assert flow is not None and flow.flow_state is FlowState.EXTERNAL
            with pytest.raises(flows.FlowExpired):
                flows.complete_external(
                    s, get_settings(), get_policies(), flow,
                    RouteIdentity(SUBJECT, Level.SUBSTANTIEEL, ("mfa",), ATTRIBUTES),
                )
            s.commit()
    flow = _flow(fapp, flow_id)
    assert flow.state == FlowState.EXPIRED.value and flow.subject_key is None
    assert sso_rows(fapp) == []


def test_route_identity_checks_its_shape() -> None:
    for bad in (
        {"subject_key": ""}, {"subject_key": "x" * 81}, {"subject_key": "a\nb"},
        {"amr": ("magic",)}, {"attributes": {"given_name": 3}},
        {"attributes": {"x" * 41: "y"}}, {"level": "super"},
    ):
        args: dict[str, Any] = {"subject_key": SUBJECT, "level": Level.MIDDEN, "amr": (),
                                "attributes": {}, **bad}
        with pytest.raises(ValueError):
            RouteIdentity(**args)
    from datetime import datetime

    with pytest.raises(ValueError):
        RouteIdentity(SUBJECT, Level.MIDDEN, (), {}, auth_time=datetime(2026, 1, 1))


# --- single sign-on from an external login --------------------------------------------------


def test_an_external_sso_session_serves_a_lower_level_at_once(fapp: Flask) -> None:
    client = _client(fapp)
    first = _login_fake(client, "substantieel", "substantieel").get_json()
    assert first["ok"] is True
    result = _start(client, "midden", rp="second").get_json()
    assert result["ok"] is True and result["subject_key"] == SUBJECT
    assert result["attributes"] == ATTRIBUTES and result["level"] == "substantieel"
    assert result["auth_time"] == first["auth_time"]  # not a new authentication
    assert result["sso_session_id"] == first["sso_session_id"]
    assert FAKE.started and len(FAKE.started) == 1
    (row,) = sso_rows(fapp)
    assert json.loads(row.rps) == ["test-rp", "second"]


def test_an_external_sso_session_at_a_lower_level_asks_again(fapp: Flask) -> None:
    client = _client(fapp)
    assert _login_fake(client, "midden", "midden").get_json()["ok"] is True
    page = _start(client, "substantieel", rp="second")
    assert "Choose how to log in" in page.get_data(as_text=True)
    page = _choose_fake(client, page)
    result = _answer(client, outcome="ok", level="substantieel").get_json()
    assert result["ok"] is True and result["level"] == "substantieel"
    (row,) = sso_rows(fapp)  # the same person: the same sign-on, raised
    assert row.level == Level.SUBSTANTIEEL and row.amr_values == ("mfa",)


def test_an_external_sso_session_is_never_stepped_up_with_account_factors(
    fapp: Flask,
) -> None:
    account_id = make_account(fapp)
    client = _client(fapp)
    page = _start(client, "basis,midden")
    _choose_fake(client, page)
    result = _answer(client, outcome="ok", level="basis", account_id=account_id).get_json()
    assert result["ok"] is True and result["account_id"] == account_id
    with get_db(fapp).begin() as s:  # the linked account's history names the route
        assert [(e.service, e.level, e.route) for e in list_events(s, account_id)] == [
            ("test-rp", "basis", "fake")]
    # Midden for another relying party: not the linked account's SMS code, a route choice.
    page = _start(client, "midden", rp="second", essential="1")
    body = page.get_data(as_text=True)
    assert "Choose how to log in" in body and 'name="code"' not in body
    assert _flow(fapp, _flow_id(page)).state == FlowState.CHOOSE_ROUTE.value
    # A passive request cannot ask: login_required.
    result = _start(client, "midden", rp="third", essential="1", passive="1").get_json()
    assert result == {"ok": False, "error": "login_required", "state": {"nonce": "n-1"}}


def test_the_self_pages_do_not_take_an_external_sso_session(fapp: Flask) -> None:
    make_account(fapp)
    client = _client(fapp)
    assert _login_fake(client, "midden", "midden").get_json()["ok"] is True
    page = client.get("/account?lang=en", follow_redirects=True)
    assert 'name="password"' in page.get_data(as_text=True)
    page = login_password(client, page)
    assert "You are logged in as jan.jansen" in page.get_data(as_text=True)
    rows = sso_rows(fapp)
    assert [(r.route, r.ended_at is not None) for r in rows] == [
        ("fake", True), ("desk_account", False)]


def test_a_forced_login_does_not_reuse_the_external_session(fapp: Flask) -> None:
    client = _client(fapp)
    assert _login_fake(client, "midden", "midden").get_json()["ok"] is True
    page = _start(client, "midden", rp="second", force="1")
    assert "Choose how to log in" in page.get_data(as_text=True)


def test_new_attributes_replace_the_old_in_the_sso_session(fapp: Flask) -> None:
    client = _client(fapp)
    assert _login_fake(client, "midden", "midden").get_json()["ok"] is True
    page = _start(client, "midden", rp="second", force="1")
    _choose_fake(client, page)
    newer = {**ATTRIBUTES, "address": "Hauptstrasse 1, Berlin"}
    result = _answer(client, outcome="ok", level="midden",
                     attributes=json.dumps(newer)).get_json()
    assert result["attributes"] == newer
    rows: list[SsoSession] = sso_rows(fapp)
    assert len(rows) == 1
    assert flows.open_attributes(get_settings(fapp), rows[0].attributes) == newer


def test_the_registry_is_the_apps(fapp: Flask) -> None:
    assert list(get_registry(fapp).routes) == ["desk_account", "fake"]


def test_the_external_state_moves_as_the_diagram_says() -> None:
    S = FlowState
    assert flows.TRANSITIONS[S.EXTERNAL] == {S.DONE, S.FAILED, S.EXPIRED, S.CHOOSE_ROUTE}
    assert S.EXTERNAL in flows.TRANSITIONS[S.CHOOSE_ROUTE]
    # Only a route choice leads there: never straight from the start or the password.
    assert [s for s in S if S.EXTERNAL in flows.TRANSITIONS[s]] == [S.CHOOSE_ROUTE]


@pytest.mark.parametrize("state", [FlowState.STARTED, FlowState.PASSWORD, FlowState.DONE])
def test_choosing_again_needs_a_waiting_flow(fapp: Flask, state: FlowState) -> None:
    request_ = RpRequest(rp_id="rp", protocol="oidc", levels=(Level.MIDDEN,),
                         resume_url="/test-rp/back")
    with fapp.test_request_context():
        s = db.session()
        flow = flows.create_flow(s, request_, Level.MIDDEN)
        force_flow(s, flow, state=state.value)
        s.commit()
        with pytest.raises(flows.IllegalTransition):
            flows.choose_again(s, flow)
        s.rollback()
        assert flows.get_flow(s, flow.id).state == state.value  # type: ignore[union-attr]
