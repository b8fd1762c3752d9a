"""The whole citizen journey in a real browser (issue 9 item 3), once in Dutch, once in English.

A person from the demo population register applies at /apply; an officer logs in at the desk
with password and TOTP, finds the application by the desk code from the SMS outbox, records a
passing document check (a TD3 MRZ with correct check digits) and approves by SMS; the citizen
activates with the A-code, then logs in at the demo portal over OIDC at basis, steps up to
midden with the SMS code, logs out (single logout), and logs in over SAML at midden, and logs
out. The gateway and the portal run in this process as two loopback werkzeug servers;
`tests/browser/journey.mjs` drives Debian's Chromium through Playwright and reports what each
step showed. Screenshots of every step go to `test-artifacts/journey/<lang>/NN-step.png`.

The keyboard-only login is `test_browser_a11y.test_login_with_the_keyboard_alone`; it is not
repeated here. Same skip rule as that test: SQLite run only; without node or Chromium the test
skips, except under CI=true, where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from gateway import clock
from gateway.app import get_settings
from gateway.desks.register import seed_demo
from gateway.levels import Level
from gateway.portal import create_portal
from gateway.portal.keys import PORTAL_URL_CONFIG
from gateway.portal.seed import seed_portal
from gateway.settings import Settings
from tests import test_browser_a11y as a11y
from tests.test_desk_views import DOC_NUMBER, make_staff, td3_mrz

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "journey"
NODE_TIMEOUT = 180  # seconds; one language's journey takes well under a minute

pytestmark = pytest.mark.skipif(
    os.environ.get("GATEWAY_TEST_DB", "sqlite") != "sqlite",
    reason="browser journey runs in the SQLite run only (the PostgreSQL run covers the same "
    "flows through the test client)",
)
browser_tools = a11y.browser_tools  # node, with tests/browser's node_modules installed

DESK = "FR-PAR"
PHONE = "+31612345678"


@dataclass(frozen=True)
class Person:
    """A fictional person from gateway/data/register-demo.csv."""

    bsn: str
    surname: str
    given: str
    birth: date


PEOPLE = {
    "nl": Person("999907475", "de Vries", "Anna Maria", date(1990, 11, 2)),
    "en": Person("999900109", "Jansen", "Pieter Jan", date(1968, 3, 14)),
}

# What the person must see at each step, by language (message ids and their Dutch from
# gateway/translations/nl/LC_MESSAGES/messages.po and the portal's templates).
EXPECTED_H1 = {
    "nl": {
        "apply-sent": "Uw aanvraag is ontvangen",
        "activated": "Uw account is geactiveerd",
        "email-check": "Uw e-mailadres",
        "oidc-stepup-code": "Voer de code in",
        "saml-code": "Voer de code in",
        "oidc-basis-result": "U bent ingelogd",
        "oidc-midden-result": "U bent ingelogd",
        "saml-midden-result": "U bent ingelogd",
        "oidc-logged-out": "U bent uitgelogd",
        "saml-logged-out": "U bent uitgelogd",
    },
    "en": {
        "apply-sent": "Your application has been received",
        "activated": "Your account is activated",
        "email-check": "Your e-mail address",
        "oidc-stepup-code": "Enter the code",
        "saml-code": "Enter the code",
        "oidc-basis-result": "You are logged in",
        "oidc-midden-result": "You are logged in",
        "saml-midden-result": "You are logged in",
        "oidc-logged-out": "You are logged out",
        "saml-logged-out": "You are logged out",
    },
}
DESK_CODE_WORD = {"nl": "baliecode", "en": "desk code"}
ACTIVATION_WORD = {"nl": "activeringscode", "en": "activation code"}


class _Dispatch:
    """A WSGI app set after the server has bound its port (the app needs the port)."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@dataclass
class Live:
    gateway: Flask
    gateway_url: str
    portal_url: str


@pytest.fixture
def live(make_app: Callable[..., Flask], settings: Settings) -> Iterator[Live]:
    """The gateway and the demo portal, each on a free loopback port."""
    servers: list[BaseWSGIServer] = []
    dispatchers = []
    for _ in range(2):
        dispatch = _Dispatch()
        servers.append(make_server("127.0.0.1", 0, dispatch, threaded=True))
        dispatchers.append(dispatch)
    gateway_url = f"http://127.0.0.1:{servers[0].server_port}"
    portal_url = f"http://127.0.0.1:{servers[1].server_port}"
    gateway = make_app(issuer=gateway_url)
    gateway.config["TESTING"] = False  # the pages as a person sees them
    gateway.config[PORTAL_URL_CONFIG] = portal_url
    with gateway.app_context():
        seed_portal(gateway)
    dispatchers[0].app = gateway
    dispatchers[1].app = create_portal(settings.with_overrides(issuer=gateway_url),
                                       portal_url=portal_url)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield Live(gateway, gateway_url, portal_url)
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join(timeout=10)


def _config(live: Live, language: str, artifacts: Path) -> dict[str, Any]:
    """Seed the register and an officer (password already changed, TOTP known)."""
    app = live.gateway
    seed_demo(app)
    officer = make_staff(app, "o.officer", desk=DESK)
    person = PEOPLE[language]
    expiry = clock.now().date() + timedelta(days=5 * 365)
    mrz = td3_mrz(number=DOC_NUMBER, expiry=expiry, birth=person.birth,
                  surname=person.surname.upper(), given=person.given.upper(),
                  personal=person.bsn)
    return {
        "base": live.gateway_url, "portal": live.portal_url, "lang": language,
        "chromium": a11y.CHROMIUM, "artifacts": str(artifacts),
        "sms_outbox": str(get_settings(app).sms_outbox), "phone": PHONE,
        "application": {
            "bsn": person.bsn, "dob-day": str(person.birth.day),
            "dob-month": str(person.birth.month), "dob-year": str(person.birth.year),
            "nationality": "NLD", "phone": "+31 6 12345678",
            "email": f"burger.{language}@example.org", "language": language,
            "username": f"burger.{language}", "password": "plakband kinderfiets wolk",
            "desk": DESK,
        },
        "officer": {"username": officer.username, "password": officer.password,
                    "secret": officer.secret},
        "check": {"document_type": "passport", "issuing_country": "NLD",
                  "document_number": DOC_NUMBER, "expiry": expiry.isoformat(),
                  "mrz": "\n".join(mrz)},
    }


def _run(node: str, config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    config_path, output_path = tmp_path / "journey-config.json", tmp_path / "journey-out.json"
    config_path.write_text(json.dumps(config))
    done = subprocess.run(
        [node, "journey.mjs", str(config_path), str(output_path)], cwd=a11y.BROWSER_DIR,
        capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False,
    )
    assert output_path.exists(), f"journey.mjs wrote nothing:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(output_path.read_text())
    shutil.copyfile(output_path, Path(config["artifacts"]) / "journey.json")
    assert result["error"] is None, (result.get("error_url"), result["error"])
    assert done.returncode == 0, done.stderr
    return result


@pytest.mark.parametrize("language", ["nl", "en"])
def test_citizen_journey_from_application_to_portal_logout(
    browser_tools: str, live: Live, tmp_path: Path, language: str
) -> None:
    artifacts = ARTIFACTS / language
    shutil.rmtree(artifacts, ignore_errors=True)
    config = _config(live, language, artifacts)
    result = _run(browser_tools, config, tmp_path)
    steps = {s["name"]: s for s in result["steps"]}
    order = [s["name"] for s in result["steps"]]
    assert order == [
        "apply-filled", "apply-sent", "desk-login", "desk-home", "desk-find", "desk-check",
        "desk-approved", "activated", "portal-home", "oidc-password", "email-check",
        "oidc-basis-result",
        "oidc-stepup-code", "oidc-midden-result", "oidc-logged-out", "saml-password",
        "saml-code", "saml-midden-result", "saml-logged-out",
    ]
    for s in result["steps"]:
        assert s["lang"] == language, (s["name"], s["url"])
        assert s["status"] in (None, 200), (s["name"], s["status"], s["url"])
        assert Path(s["screenshot"]).name == f"{s['n']:02d}-{s['name']}.png"
        assert Path(s["screenshot"]).stat().st_size > 0
    # Nothing the browser refused (a Content-Security-Policy violation blocks a form silently)
    # and nothing that failed to load, but the favicon neither page has.
    assert result["console"] == [] or all("404" in m for m in result["console"]), result["console"]
    failed = [r for r in result["failed_requests"] if not r["url"].endswith("/favicon.ico")]
    assert failed == [], failed
    for name, h1 in EXPECTED_H1[language].items():
        assert steps[name]["h1"] == h1, (name, steps[name]["h1"], steps[name]["url"])

    # The codes came by SMS, in the language the person chose.
    assert DESK_CODE_WORD[language] in result["sms"]["desk"]
    assert ACTIVATION_WORD[language] in result["sms"]["activation"]

    # The desk: the officer got in, the application opened, the check passed, approval by SMS.
    gateway, portal = config["base"], config["portal"]
    assert steps["desk-home"]["url"].startswith(gateway + "/desk")
    assert "/desk/login" not in steps["desk-home"]["url"]
    assert "/desk/applications/" in steps["desk-find"]["url"]
    person = PEOPLE[language]
    assert person.surname in steps["desk-find"]["text"]
    assert "/desk/applications/" in steps["desk-approved"]["url"]

    # The portal's result pages show the level reached, and who logged in.
    basis, midden = steps["oidc-basis-result"], steps["oidc-midden-result"]
    saml = steps["saml-midden-result"]
    assert basis["url"] == portal + "/result" and basis["level"] == "basis"
    assert Level.BASIS.context_class in basis["text"] and person.bsn in basis["text"]
    assert midden["url"] == portal + "/result" and midden["level"] == "midden"
    assert Level.MIDDEN.context_class in midden["text"] and "OpenID Connect" in midden["text"]
    assert saml["url"] == portal + "/result" and saml["level"] == "midden"
    assert Level.MIDDEN.context_class in saml["text"]
    assert "SAML 2.0" in saml["text"] and f"s00000000:{person.bsn}" in saml["text"]
    # After the first login the gateway asked for an e-mail address it can trust (the one
    # from the application was never proven by a code); "ask me later" went on to the portal.
    assert steps["email-check"]["url"] == gateway + "/account/email-check"
    # Step-up asked for the code only (single sign-on kept the password step); after the
    # OIDC logout the SAML login asked for the password again.
    # (the step order above has no password step before "oidc-stepup-code").
    assert steps["oidc-stepup-code"]["url"].startswith(gateway + "/login/")
    assert steps["saml-password"]["url"].startswith(gateway)
    assert steps["oidc-logged-out"]["url"].startswith(portal + "/oidc/logged-out")
    assert steps["saml-logged-out"]["url"].startswith(portal + "/saml/sls")
