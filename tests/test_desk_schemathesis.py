"""The desk API fuzzed with schemathesis against its own OpenAPI document (issue 4, "Tests":
"The desk API fuzzed with schemathesis against its own OpenAPI document: no 500s").

The document is loaded from the app (WSGI, no network); every generated request is sent as a
logged-in officer and must get no server error, a documented status code, the documented
content type, and a body that matches the documented schema. DELETE /session is left out:
it would end the officer's token and every later case would only test the 401.
Bounded so the whole run takes seconds: few examples per operation, no deadline (the first
request of an app is slow, and argon2 makes every login attempt slow on purpose).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_desk_api import api_token
from tests.test_desk_views import make_application, make_staff

#: Cases per run over all operations together (the strategy picks an operation per case).
MAX_EXAMPLES = 80


@pytest.fixture
def fuzz_app(make_app: Any) -> Flask:
    app: Flask = make_app()
    # One application to find and act on, so generated cases can reach past the 404s.
    app.config["FUZZ_APPLICATION"] = make_application(app)
    officer = make_staff(app, "f.officer")
    app.config["FUZZ_TOKEN"] = api_token(app.test_client(), officer)
    return app


def _fuzz(schema: Any, app: Flask, mode: GenerationMode, examples: int = MAX_EXAMPLES,
          **fixed: Any) -> None:
    headers = {"Authorization": "Bearer " + app.config["FUZZ_TOKEN"]}

    @given(case=schema.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            headers=headers,
            checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                    response_schema_conformance],
        )

    run()


def _schema(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/desk/api/openapi.json", app).exclude(
        method="DELETE", path="/session"
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_desk_api_has_no_server_errors(fuzz_app: Flask, mode: GenerationMode) -> None:
    _fuzz(_schema(fuzz_app), fuzz_app, mode)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_desk_api_on_a_real_application_has_no_server_errors(
    fuzz_app: Flask, mode: GenerationMode
) -> None:
    # Random ids only ever meet a 404; these cases act on an application that exists. A
    # rejection ends it, so the rejecting cases come last.
    application_id, desk_code = fuzz_app.config["FUZZ_APPLICATION"]
    schema = _schema(fuzz_app)
    by_id: dict[str, Any] = {"path_parameters": {"application_id": application_id},
                             "examples": MAX_EXAMPLES // 3}
    _fuzz(schema.include(path="/applications/{application_id}/checks"), fuzz_app, mode, **by_id)
    _fuzz(schema.include(path="/applications/{desk_code}"), fuzz_app, mode,
          MAX_EXAMPLES // 3, path_parameters={"desk_code": desk_code})
    _fuzz(schema.include(path="/applications/{application_id}/approve"), fuzz_app, mode,
          **by_id)
    _fuzz(schema.include(path="/applications/{application_id}/reject"), fuzz_app, mode, **by_id)
