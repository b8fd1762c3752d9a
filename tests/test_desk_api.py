"""The desk JSON API (gateway.desks.api) and its OpenAPI 3.1 document (gateway.desks.openapi):
bearer tokens (401/403), strict bodies (400/413/415/422), problem details (RFC 9457) for
every refusal, and the happy path from desk code to activation code in the SMS outbox."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from gateway import clock
from gateway.db import get_db
from gateway.desks.api import PROBLEM_TYPE_BASE
from gateway.desks.blueprint import desk_api
from gateway.desks.models import Application
from gateway.web import MAX_CONTENT_LENGTH
from tests.test_desk_views import (
    DOC_NUMBER,
    PHONE,
    Staff,
    desk_app,  # noqa: F401 - fixture
    make_application,
    make_staff,
    sms_outbox,
    td3_mrz,
)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def api_token(client: FlaskClient, staff: Staff) -> str:
    response = client.post("/desk/api/session", json={
        "username": staff.username, "password": staff.password, "totp": staff.code(),
    })
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["token"]
    return token


@pytest.fixture
def client(desk_app: Flask) -> FlaskClient:  # noqa: F811
    return desk_app.test_client()


@pytest.fixture
def officer_headers(desk_app: Flask, client: FlaskClient) -> dict[str, str]:  # noqa: F811
    return {"Authorization": "Bearer " + api_token(client, make_staff(desk_app, "o.officer"))}


def _problem(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    if code is not None:
        assert body["code"] == code
        assert body["type"] == PROBLEM_TYPE_BASE + code
    return body


def _check_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "document_type": "passport", "issuing_country": "NLD", "document_number": DOC_NUMBER,
        "expiry": (clock.now().date() + timedelta(days=3 * 365)).isoformat(),
        "mrz": td3_mrz(),
    }
    body.update(overrides)
    return body


# --- the OpenAPI document ------------------------------------------------------------------


def test_openapi_document_is_valid_3_1_and_describes_every_route(
    desk_app: Flask, client: FlaskClient  # noqa: F811
) -> None:
    response = client.get("/desk/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "Problem" in document["components"]["schemas"]

    documented = {
        (path, method.upper())
        for path, item in document["paths"].items() for method in item
    }
    routes = set()
    for rule in desk_app.url_map.iter_rules():
        if not rule.endpoint.startswith(desk_api.name + ".") or rule.endpoint.endswith(
                ".openapi_json"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule.removeprefix("/desk/api"))
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method))
    assert routes == documented

    # Every operation but the login documents 401 and a problem+json 403.
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if (path, method) == ("/session", "post"):
                continue
            assert "401" in operation["responses"], (path, method)
            if path != "/session":
                content = operation["responses"]["403"]["content"]
                assert "application/problem+json" in content


# --- authentication ------------------------------------------------------------------------


ENDPOINTS = [
    ("GET", "/desk/api/applications/BCDFGHJKL"),
    ("POST", f"/desk/api/applications/{UNKNOWN_ID}/checks"),
    ("POST", f"/desk/api/applications/{UNKNOWN_ID}/approve"),
    ("POST", f"/desk/api/applications/{UNKNOWN_ID}/reject"),
    ("GET", "/desk/api/four-eyes"),
    ("POST", "/desk/api/four-eyes"),
    ("POST", f"/desk/api/four-eyes/{UNKNOWN_ID}/decision"),
    ("GET", "/desk/api/audit.csv"),
]


@pytest.mark.parametrize("authorization", [None, "Bearer " + "x" * 43, "Basic Zm9vOmJhcg==",
                                           "Bearer \x00", "Bearer " + "y" * 5000])
def test_every_endpoint_needs_a_valid_token(client: FlaskClient,
                                            authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path in ENDPOINTS:
        response = client.open(path, method=method, headers=headers, json={})
        _problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_auditor_cannot_approve_or_find_but_can_export(desk_app: Flask,  # noqa: F811
                                                       client: FlaskClient) -> None:
    application_id, code = make_application(desk_app)
    auditor = make_staff(desk_app, "a.auditor", role="auditor")
    headers = {"Authorization": "Bearer " + api_token(client, auditor)}
    _problem(client.post(f"/desk/api/applications/{application_id}/approve", headers=headers,
                         json={"delivery": "sms"}), 403)
    _problem(client.get(f"/desk/api/applications/{code}", headers=headers), 403)
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        assert s.get(Application, application_id).status == "submitted"
        s.close()
    export = client.get("/desk/api/audit.csv", headers=headers)
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert export.get_data(as_text=True).startswith("seq,")
    _problem(client.get("/desk/api/audit.csv?since=yesterday", headers=headers), 422)


def test_officer_cannot_export_or_decide(client: FlaskClient,
                                         officer_headers: dict[str, str]) -> None:
    _problem(client.get("/desk/api/audit.csv", headers=officer_headers), 403)
    _problem(client.post(f"/desk/api/four-eyes/{UNKNOWN_ID}/decision", headers=officer_headers,
                         json={"approve": True}), 403)


# --- bad input -----------------------------------------------------------------------------


def test_unknown_desk_codes_and_ids_get_a_404_problem(client: FlaskClient,
                                                     officer_headers: dict[str, str]) -> None:
    for desk_code in ("BCDFGHJKL", "B", "x" * 300, "%00", "B%C3%A9CDFGHJK", "AAAAAAAAA",
                      "..%5C..%5Cetc", "%F0%9F%98%80"):
        body = _problem(client.get(f"/desk/api/applications/{desk_code}",
                                   headers=officer_headers), 404, "unknown_code")
        assert body["field"] == "desk_code"
    # A well-formed id that this token never opened by desk code: refused before any lookup.
    _problem(client.post(f"/desk/api/applications/{UNKNOWN_ID}/checks",
                         headers=officer_headers, json=_check_body()), 403, "not_opened")
    for application_id in ("1", "x" * 300, "%00", "00000000-0000-4000-8000-00000000000G"):
        _problem(client.post(f"/desk/api/applications/{application_id}/checks",
                             headers=officer_headers, json=_check_body()), 404, "not_found")
        _problem(client.post(f"/desk/api/applications/{application_id}/reject",
                             headers=officer_headers, json={"reason": "x"}), 404, "not_found")


BAD_BODIES: list[Any] = [
    {},
    [],
    "passport",
    0,
    {"document_type": "passport"},
    {"extra": 1},
    {"document_type": 1, "issuing_country": "NLD", "document_number": "X",
     "expiry": "2030-01-01"},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X",
     "expiry": "2030-01-01", "unexpected": True},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": ["X"],
     "expiry": "2030-01-01"},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X",
     "expiry": 20300101},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X",
     "expiry": "2030-02-30"},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X" * 500,
     "expiry": "2030-01-01"},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X\u0000Y",
     "expiry": "2030-01-01"},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X",
     "expiry": "2030-01-01", "mrz": ["a"] * 50},
    {"document_type": "passport", "issuing_country": "NLD", "document_number": "X",
     "expiry": "2030-01-01", "surname": "a\nb"},
]


def _opened(app: Flask, client: FlaskClient, headers: dict[str, str]) -> str:
    """An application found through its desk code by this token, as at a real desk."""
    application_id, code = make_application(app)
    assert client.get(f"/desk/api/applications/{code}", headers=headers).status_code == 200
    return application_id


def test_acting_needs_the_desk_code_first(desk_app: Flask, client: FlaskClient,  # noqa: F811
                                          officer_headers: dict[str, str]) -> None:
    application_id, code = make_application(desk_app)
    for action, body in (("checks", _check_body()), ("reject", {"reason": "x"}),
                         ("approve", {"delivery": "sms"})):
        _problem(client.post(f"/desk/api/applications/{application_id}/{action}",
                             headers=officer_headers, json=body), 403, "not_opened")
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        assert s.get(Application, application_id).status == "submitted"
        s.close()
    assert client.get(f"/desk/api/applications/{code}", headers=officer_headers).status_code == 200
    assert client.post(f"/desk/api/applications/{application_id}/reject",
                       headers=officer_headers, json={"reason": "x"}).status_code == 200


def test_wrong_json_shapes_get_422(desk_app: Flask, client: FlaskClient,  # noqa: F811
                                   officer_headers: dict[str, str]) -> None:
    application_id = _opened(desk_app, client, officer_headers)
    for body in BAD_BODIES:
        response = client.post(f"/desk/api/applications/{application_id}/checks",
                               headers=officer_headers, json=body)
        problem = _problem(response, 422)
        assert problem["errors"], body
        assert all("field" in e and "message" in e for e in problem["errors"])
        # The refused values are never echoed back.
        assert "X\u0000Y" not in response.get_data(as_text=True)
    with desk_app.app_context():
        s = get_db(desk_app).sessionmaker()
        assert s.get(Application, application_id).status == "submitted"
        s.close()


def test_malformed_json_wrong_media_type_and_huge_bodies(desk_app: Flask,  # noqa: F811
                                                         client: FlaskClient,
                                                         officer_headers: dict[str, str]
                                                         ) -> None:
    application_id = _opened(desk_app, client, officer_headers)
    path = f"/desk/api/applications/{application_id}/reject"
    json_headers = {**officer_headers, "Content-Type": "application/json"}
    _problem(client.post(path, headers=json_headers, data=b'{"reason": '), 400)
    _problem(client.post(path, headers=json_headers, data=b"\xff\xfe\x00"), 400)
    _problem(client.post(path, headers=json_headers, data=b'{"reason": "\\ud800"}'), 400)
    _problem(client.post(path, headers=officer_headers, data={"reason": "x"}), 415)
    _problem(client.post(path, headers=json_headers,
                         data=json.dumps({"reason": "x" * MAX_CONTENT_LENGTH})), 413)
    # A service refusal (whitespace only) is a 422 with the service's code and field.
    body = _problem(client.post(path, headers=officer_headers, json={"reason": "   "}), 422,
                    "bad_reason")
    assert body["field"] == "reason"


# --- the happy path ------------------------------------------------------------------------


def test_find_check_approve_through_the_api(desk_app: Flask,  # noqa: F811
                                            client: FlaskClient,
                                            officer_headers: dict[str, str]) -> None:
    application_id, code = make_application(desk_app)
    found = client.get(f"/desk/api/applications/{code.lower()}", headers=officer_headers)
    assert found.status_code == 200, found.get_json()
    assert found.headers["Cache-Control"] == "no-store"
    body = found.get_json()
    assert body["id"] == application_id and body["state"] == "submitted"
    assert body["population_register"]["surname"] == "de Bruijn"
    assert body["checks"] == []

    # Approving before a check passes is a conflict, and nothing changes.
    _problem(client.post(f"/desk/api/applications/{application_id}/approve",
                         headers=officer_headers, json={"delivery": "sms"}), 409,
             "check_required")

    expired = clock.now().date() - timedelta(days=1)
    failed = client.post(f"/desk/api/applications/{application_id}/checks",
                         headers=officer_headers,
                         json=_check_body(expiry=expired.isoformat(),
                                          mrz=td3_mrz(expiry=expired)))
    assert failed.status_code == 201, failed.get_json()
    assert failed.get_json()["passed"] is False
    assert [p["code"] for p in failed.get_json()["problems"]] == ["document_expired"]

    clock.advance(timedelta(seconds=1))
    check = client.post(f"/desk/api/applications/{application_id}/checks",
                        headers=officer_headers, json=_check_body())
    assert check.status_code == 201, check.get_json()
    assert check.get_json()["passed"] is True and check.get_json()["problems"] == []

    again = client.get(f"/desk/api/applications/{code}", headers=officer_headers).get_json()
    assert again["state"] == "checked"
    assert [c["passed"] for c in again["checks"]] == [True, False]  # newest first

    approval = client.post(f"/desk/api/applications/{application_id}/approve",
                           headers=officer_headers, json={"delivery": "sms"})
    assert approval.status_code == 200, approval.get_json()
    result = approval.get_json()
    assert result["delivery"] == "sms" and result["delivered"] is True
    assert result["letter_pdf"] is None
    messages = sms_outbox(desk_app)
    assert [m["to"] for m in messages] == [PHONE]
    assert re.search(r"\bA[BCDFGHJKLMNPQRSTVWXZ2-9]{8}\b", messages[0]["text"])

    _problem(client.get(f"/desk/api/applications/{code}", headers=officer_headers), 409,
             "used_code")


def test_letter_approval_returns_the_pdf(desk_app: Flask, client: FlaskClient,  # noqa: F811
                                         officer_headers: dict[str, str]) -> None:
    application_id = _opened(desk_app, client, officer_headers)
    assert client.post(f"/desk/api/applications/{application_id}/checks",
                       headers=officer_headers, json=_check_body()).status_code == 201
    _problem(client.post(f"/desk/api/applications/{application_id}/approve",
                         headers=officer_headers,
                         json={"delivery": "letter", "letter_address": ["only one line"]}),
             422)
    response = client.post(f"/desk/api/applications/{application_id}/approve",
                           headers=officer_headers,
                           json={"delivery": "letter",
                                 "letter_address": ["W. de Bruijn", "12 Example Street",
                                                    "London SW1A 1AA", "United Kingdom"]})
    assert response.status_code == 200, response.get_json()
    assert base64.b64decode(response.get_json()["letter_pdf"]).startswith(b"%PDF")
    assert sms_outbox(desk_app) == []


def test_reject_through_the_api(desk_app: Flask, client: FlaskClient,  # noqa: F811
                                officer_headers: dict[str, str]) -> None:
    application_id = _opened(desk_app, client, officer_headers)
    response = client.post(f"/desk/api/applications/{application_id}/reject",
                           headers=officer_headers, json={"reason": "Not the same person."})
    assert response.status_code == 200
    assert response.get_json() == {"id": application_id, "state": "rejected"}
    _problem(client.post(f"/desk/api/applications/{application_id}/reject",
                         headers=officer_headers, json={"reason": "again"}), 409, "used_code")


def test_four_eyes_request_for_unknown_account_is_refused(
    client: FlaskClient, officer_headers: dict[str, str]
) -> None:
    response = client.post("/desk/api/four-eyes", headers=officer_headers, json={
        "kind": "unblock_account", "object_ref": f"account:{UNKNOWN_ID}", "reason": "Locked.",
    })
    assert 400 <= response.status_code < 500
    _problem(response, response.status_code)
    listing = client.get("/desk/api/four-eyes", headers=officer_headers)
    assert listing.status_code == 200 and listing.get_json() == {"items": []}
