"""The OpenAPI 3.1 document of the desk API, served at /desk/api/openapi.json
(shared/INTERFACE.md, "HTTP endpoints").

Built, not written by hand: request and response schemas come from the pydantic models in
gateway.desks.api (JSON Schema 2020-12, the dialect OpenAPI 3.1 uses), and the session
endpoints from gateway.desks.auth.openapi_fragment(). Errors are RFC 9457 problem details,
described once as `Problem`. Paths are relative to the server URL `/desk/api`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from flask import Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.desks import api
from gateway.desks.auth import openapi_fragment
from gateway.desks.blueprint import desk_api

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
REF = "#/components/schemas/{model}"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; extension members may be added.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "code": {"type": "string", "description": "Stable refusal code of the desk service."},
        "field": {"type": ["string", "null"], "description": "The input at fault."},
        "errors": {
            "type": "array",
            "description": "Per-field validation errors (422 only).",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_ERROR_TEXT = {
    "400": "The body is not valid JSON.",
    "401": "No valid bearer token (WWW-Authenticate: Bearer).",
    "403": "The staff member's role (or desk) may not do this.",
    "404": "No such application or request (or an unknown desk code).",
    "409": "The application or request is not in a state that allows this.",
    "410": "The desk code (or the link code of a European eID) has expired.",
    "413": "The body is larger than the gateway accepts.",
    "415": "The body is not application/json.",
    "422": "The body has the wrong fields or types, or the service refused the input.",
}


def _problem(status: str) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT[status],
        "content": {"application/problem+json": {"schema": {"$ref": REF.format(
            model="Problem")}}},
    }


def _json(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(
                model=model.__name__)}}}}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "$ref": REF.format(model=model.__name__)}}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: _problem(status) for status in ("401", "403", *statuses)}


_ID_PARAM = {
    "in": "path", "required": True,
    "schema": {"type": "string", "format": "uuid", "pattern": api.ID_RE.pattern},
}
_BODY_ERRORS = ("400", "413", "415", "422")


def _paths() -> dict[str, Any]:
    return {
        "/applications/{desk_code}": {
            "get": {
                "operationId": "findApplication",
                "summary": "Find an application by the desk code the applicant brings.",
                "parameters": [{
                    "name": "desk_code", "in": "path", "required": True,
                    "description": "B + 8 characters; spaces, dashes and case are ignored.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                }],
                "responses": {
                    "200": _json("The application, the register's data and earlier checks.",
                                 api.ApplicationOut),
                    **_errors("404", "409", "410"),
                },
            },
        },
        "/applications/{application_id}/checks": {
            "post": {
                "operationId": "recordDocumentCheck",
                "summary": "Record the document check; the result lists every problem found.",
                "parameters": [{"name": "application_id", **_ID_PARAM}],
                "requestBody": _body(api.DocumentCheckIn),
                "responses": {
                    "201": _json("The check was recorded (passed or not).", api.CheckOut),
                    **_errors("404", "409", *_BODY_ERRORS),
                },
            },
        },
        "/applications/{application_id}/approve": {
            "post": {
                "operationId": "approveApplication",
                "summary": "Approve a checked application and send the activation code.",
                "parameters": [{"name": "application_id", **_ID_PARAM}],
                "requestBody": _body(api.ApproveIn),
                "responses": {
                    "200": _json("Approved; the account waits for activation.",
                                 api.ApprovalOut),
                    **_errors("404", "409", *_BODY_ERRORS),
                },
            },
        },
        "/applications/{application_id}/reject": {
            "post": {
                "operationId": "rejectApplication",
                "summary": "Reject an application with a reason.",
                "parameters": [{"name": "application_id", **_ID_PARAM}],
                "requestBody": _body(api.RejectIn),
                "responses": {
                    "200": _json("Rejected.", api.DecisionOut),
                    **_errors("404", "409", *_BODY_ERRORS),
                },
            },
        },
        "/four-eyes": {
            "get": {
                "operationId": "listFourEyes",
                "summary": "Pending four-eyes requests of the staff member's desk.",
                "responses": {"200": _json("The pending requests.", api.FourEyesListOut),
                              **_errors()},
            },
            "post": {
                "operationId": "requestFourEyes",
                "summary": "Ask a supervisor of the same desk to approve a sensitive action.",
                "requestBody": _body(api.FourEyesIn),
                "responses": {
                    "201": _json("The request waits for a supervisor.", api.FourEyesOut),
                    **_errors("404", "409", "410", *_BODY_ERRORS),
                },
            },
        },
        "/four-eyes/{request_id}/decision": {
            "post": {
                "operationId": "decideFourEyes",
                "summary": "Approve (and so carry out) or refuse a four-eyes request.",
                "parameters": [{"name": "request_id", **_ID_PARAM}],
                "requestBody": _body(api.DecisionIn),
                "responses": {
                    "200": _json("Decided.", api.FourEyesDecisionOut),
                    **_errors("404", "409", "410", *_BODY_ERRORS),
                },
            },
        },
        "/accounts/{account_id}/suspension": {
            "post": {
                "operationId": "suspendAccount",
                "summary": "Suspend an active account at once on suspected misuse (lifting it"
                           " is the four-eyes kind lift_suspension).",
                "parameters": [{"name": "account_id", **_ID_PARAM}],
                "requestBody": _body(api.SuspendIn),
                "responses": {
                    "200": _json("Suspended: sessions ended, tokens and codes void.",
                                 api.SuspensionOut),
                    **_errors("404", "409", *_BODY_ERRORS),
                },
            },
        },
        "/accounts/{account_id}/eidas-links/{link_id}": {
            "delete": {
                "operationId": "removeEidasLink",
                "summary": "Remove a European eID link made in error, at once (the eID's"
                           " sessions with the account end; the holder is mailed).",
                "parameters": [{"name": "account_id", **_ID_PARAM},
                               {"name": "link_id", **_ID_PARAM}],
                "requestBody": _body(api.UnlinkIn),
                "responses": {
                    "200": _json("Removed.", api.UnlinkOut),
                    **_errors("404", *_BODY_ERRORS),
                },
            },
        },
        "/audit.csv": {
            "get": {
                "operationId": "exportAudit",
                "summary": "The audit trail of the auditor's desk as CSV (auditors only).",
                "parameters": [{
                    "name": "since", "in": "query", "required": False,
                    "schema": {"type": "string", "format": "date-time"},
                }],
                "responses": {
                    "200": {"description": "CSV with a header row.",
                            "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **_errors("422"),
                },
            },
        },
    }


def _schemas() -> dict[str, Any]:
    inputs = (api.DocumentCheckIn, api.ApproveIn, api.RejectIn, api.FourEyesIn, api.DecisionIn,
              api.SuspendIn, api.UnlinkIn)
    outputs = tuple(m for m in api.SCHEMA_MODELS if m not in inputs)
    _, top = models_json_schema(
        [*((m, "validation") for m in inputs), *((m, "serialization") for m in outputs)],
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA
    return schemas


@functools.cache
def _document() -> dict[str, Any]:
    fragment = openapi_fragment()
    paths = {**fragment["paths"], **_paths()}
    components: dict[str, Any] = {"schemas": _schemas(), **{
        k: v for k, v in fragment.get("components", {}).items() if k != "schemas"}}
    components["schemas"].update(fragment.get("components", {}).get("schemas", {}))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "abroad-gateway desk API",
            "version": API_VERSION,
            "description": (
                "Desk staff find applications by desk code, record document checks, approve "
                "or reject, suspend an account, and ask for and decide four-eyes requests; "
                "auditors export their desk's audit trail. Log in with POST /session for a "
                "bearer token. Errors are RFC 9457 problem details."
            ),
            "license": {"name": "EUPL-1.2", "identifier": "EUPL-1.2"},
        },
        "servers": [{"url": "/desk/api"}],
        "security": fragment.get("security", [{"bearer": []}]),
        "paths": paths,
        "components": components,
    }


def openapi_document() -> dict[str, Any]:
    """The document as a fresh dict (callers may change their copy)."""
    return copy.deepcopy(_document())


@desk_api.get("/openapi.json")
def openapi_json() -> Response:
    response = jsonify(_document())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
