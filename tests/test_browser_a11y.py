"""Every citizen and desk page in a real browser (issue 9 items 3 and 4): axe-core's WCAG 2.1 A
and AA rules (the Dutch government's legal bar, via EN 301 549) must find nothing, in Dutch and
in English, on each page in its normal and its error state; and the login works with the
keyboard alone, with a visible focus indicator on everything Tab reaches (WCAG 2.4.7, 2.1.1).

The gateway runs in this process on a free loopback port (a werkzeug server in a thread) with
seeded accounts, staff and an application; `tests/browser/audit.mjs` drives Debian's Chromium
through Playwright and writes its findings as JSON. Full-page screenshots go to
`test-artifacts/a11y/`. Without `node` or `/usr/bin/chromium` the tests skip, except under
CI=true, where they must run (`./dev test` installs Chromium).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from gateway import clock
from gateway.accounts.history import EventKind, record_event
from gateway.accounts.models import Account
from gateway.app import get_settings
from gateway.db import get_db
from tests.test_apply import bsn_from
from tests.test_desk_views import DOC_NUMBER, make_application, make_staff, td3_mrz
from tests.test_login_flow import MOBILE, PASSWORD, make_account

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "test-artifacts" / "a11y"
CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI") == "true"

# The audit is about markup, not storage: it runs once, in the SQLite run of ./dev test (the
# PostgreSQL run covers the same pages' behaviour through the test client), which keeps the
# suite's wall-clock time down.
pytestmark = pytest.mark.skipif(
    os.environ.get("GATEWAY_TEST_DB", "sqlite") != "sqlite",
    reason="browser audit runs in the SQLite run only (markup does not depend on the database)",
)
NODE_TIMEOUT = 240  # seconds; a whole language's walk takes well under a minute

# Pages the walk must have audited: a page that silently went missing would hide violations.
CITIZEN_PAGES = {
    "home": 200, "apply": 200, "apply-errors": 422, "apply-sent": 200, "activate": 200,
    "activate-errors": None, "login": 200, "login-errors": None, "login-blocked": None,
    "login-suspended": 200,
    "account": 200, "choose-factor": 200, "code": 200, "code-errors": None, "code-sent": None,
    "account-midden": 200, "account-history": 200, "account-settings": 200,
    "account-password": 200, "account-password-errors": None, "account-phone": 200,
    "account-email": 200, "account-app": 200, "account-deactivate": 200, "account-eid": 200,
    "not-found": 404, "method-not-allowed": 405,
}
DESK_PAGES = {
    "desk-login": 200, "desk-login-errors": None, "desk-home": 200, "desk-find": 200,
    "desk-find-errors": 422, "desk-application": 200, "desk-check-errors": 422,
    "desk-check-result": 200, "desk-approved": 200, "desk-four-eyes": 200,
    "desk-four-eyes-new": 200, "desk-four-eyes-errors": 422, "desk-password": 200,
    "desk-audit": 200, "desk-suspend": 200, "desk-suspend-errors": 422,
    "desk-account": 200, "desk-account-errors": 422, "desk-account-overview": 200,
    "desk-eidas-unlink": 200, "desk-eidas-unlink-errors": 422, "desk-eidas-unlink-links": 200,
    "desk-eidas-unlink-links-errors": 422, "desk-eidas-unlink-removed": 200,
}


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true; ./dev test installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser_tools() -> str:
    """The node binary, with tests/browser's node_modules installed (npm ci, once)."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        _unavailable("node and npm are not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is not installed (Debian package chromium)")
    assert node is not None
    # Two xdist workers may get here at once: one installs, the other waits.
    lock_path = Path(tempfile.gettempdir()) / "abroad-gateway-npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        modules = BROWSER_DIR / "node_modules"
        if not (modules / "playwright-core").is_dir() or not (modules / "axe-core").is_dir():
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR,
                capture_output=True, text=True, timeout=300, check=False,
            )
            if done.returncode != 0:
                _unavailable(f"npm ci in tests/browser failed: {done.stderr.strip()[-500:]}")
    return node


class _Deferred:
    """A WSGI app filled in once the server's port (and so the issuer) is known."""

    app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@pytest.fixture
def live_app(make_app: Callable[..., Flask]) -> Iterator[tuple[Flask, str]]:
    deferred = _Deferred()
    server = make_server("127.0.0.1", 0, deferred, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    deferred.app = make_app(issuer=base)
    deferred.app.config["TESTING"] = False  # the pages as a person sees them
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield deferred.app, base
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _seed_link(app: Flask, officer_id: str, supervisor_id: str) -> dict[str, str]:
    """An account with a European eID linked the four-eyes way, for /desk/eidas-unlink (and,
    before the link is removed, /desk/account)."""
    from gateway.app import get_policies
    from gateway.desks import eidas_links, four_eyes
    from gateway.desks.models import StaffAccount

    account_id = make_account(app, "eva.linked")
    with app.app_context():
        s = get_db(app).sessionmaker()
        try:
            account = s.get(Account, account_id)
            assert account is not None
            account.bsn = "111222333"  # not the seeded application's BSN
            s.commit()
            settings = get_settings(app)
            issued = eidas_links.issue_link_code(
                s, settings, subject_key="eidas:" + "ab" * 32,
                attributes={"given_name": "Eva", "family_name": "Müller",
                            "birthdate": account.birth_date.isoformat(), "country": "DE"})
            s.commit()
            officer, supervisor = s.get(StaffAccount, officer_id), s.get(StaffAccount,
                                                                          supervisor_id)
            assert officer is not None and supervisor is not None
            request = four_eyes.request_four_eyes(
                s, staff=officer, kind="link_eidas", object_ref=f"account:{account_id}",
                payload={"link_code": issued.code}, reason="German identity card checked",
                settings=settings, policies=get_policies(app))
            four_eyes.decide_four_eyes(s, settings, app, supervisor=supervisor,
                                       request_id=request.id, approve=True)
            link_id = eidas_links.links_of(s, account_id)[0].id
            # A login in the usage history, for the table of /desk/account.
            record_event(s, account_id, EventKind.LOGIN, service="Belastingdienst",
                         level="substantieel", route="eidas")
            s.commit()
            birth_date = account.birth_date.isoformat()
        finally:
            s.close()
    return {"username": "eva.linked", "birth_date": birth_date, "link": link_id,
            "reason": "Linked to the wrong account at the desk"}


def _seed(app: Flask, language: str) -> dict[str, Any]:
    """Accounts, staff and an application for the walk; returns what the script needs."""
    make_account(app, "jan.jansen", phone=MOBILE, totp_secret="JBSWY3DPEHPK3PXP")
    blocked = make_account(app, "piet.blocked")
    with get_db(app).begin() as s:
        account = s.get(Account, blocked)
        assert account is not None
        account.blocked_until = clock.now() + timedelta(hours=1)
    suspended = make_account(app, "sara.suspended")
    with get_db(app).begin() as s:
        account = s.get(Account, suspended)
        assert account is not None
        account.suspended_at = clock.now()
    officer = make_staff(app, "o.officer")
    auditor = make_staff(app, "a.auditor", role="auditor")
    supervisor = make_staff(app, "s.supervisor", role="supervisor")
    unlink = _seed_link(app, officer.id, supervisor.id)
    _, desk_code = make_application(app)
    expiry = clock.now().date() + timedelta(days=3 * 365)
    return {
        "citizen": {
            "username": "jan.jansen", "password": PASSWORD, "phone": MOBILE,
            "blocked_username": "piet.blocked", "suspended_username": "sara.suspended",
            "application": {
                "bsn": bsn_from("11122233" if language == "nl" else "23456789"),
                "dob-day": "27", "dob-month": "3", "dob-year": "1985", "nationality": "NLD",
                "phone": "+33 6 12 34 56 78", "email": "aanvrager@example.org",
                "language": language, "username": f"aanvrager.{language}",
                "password": "plakband kinderfiets wolk", "desk": "FR-PAR",
            },
        },
        "desk": {
            "officer": {"username": officer.username, "password": officer.password,
                        "secret": officer.secret},
            "auditor": {"username": auditor.username, "password": auditor.password,
                        "secret": auditor.secret},
            "desk_code": desk_code,
            "unlink": unlink,
            "check": {"document_type": "passport", "issuing_country": "NLD",
                      "document_number": DOC_NUMBER, "expiry": expiry.isoformat(),
                      "mrz": "\n".join(td3_mrz(expiry=expiry))},
        },
    }


def _run(node: str, app: Flask, base: str, tmp_path: Path, mode: str,
         language: str, **extra: Any) -> dict[str, Any]:
    config = {
        "mode": mode, "base": base, "lang": language, "chromium": CHROMIUM,
        "artifacts": str(ARTIFACTS), "sms_outbox": str(get_settings(app).sms_outbox),
        **_seed(app, language), **extra,
    }
    config_path, output_path = tmp_path / "browser-config.json", tmp_path / "browser-out.json"
    config_path.write_text(json.dumps(config))
    done = subprocess.run(
        [node, "audit.mjs", str(config_path), str(output_path)], cwd=BROWSER_DIR,
        capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False,
    )
    assert output_path.exists(), f"audit.mjs wrote nothing:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(output_path.read_text())
    shutil.copyfile(output_path, ARTIFACTS / f"{mode}-{language}.json")
    assert result["error"] is None, result["error"]
    assert done.returncode == 0, done.stderr
    return result


def _describe(pages: list[dict[str, Any]]) -> str:
    lines = []
    for page in pages:
        for violation in page["violations"]:
            targets = "; ".join(" ".join(n["target"]) for n in violation["nodes"][:5])
            lines.append(f"{page['name']}: {violation['id']} ({violation['impact']}): "
                         f"{violation['help']} -> {targets}")
    return "\n".join(lines)


@pytest.mark.parametrize("language", ["nl", "en"])
def test_every_page_has_no_wcag21_aa_violations(
    browser_tools: str, live_app: tuple[Flask, str], tmp_path: Path, language: str
) -> None:
    app, base = live_app
    result = _run(browser_tools, app, base, tmp_path, "pages", language)
    pages = {page["name"]: page for page in result["pages"]}
    expected = {**CITIZEN_PAGES, **DESK_PAGES}
    assert sorted(set(expected) - set(pages)) == [], "pages the walk did not reach"
    for name, status in expected.items():
        if status is not None:
            assert pages[name]["status"] == status, (name, pages[name]["url"])
        assert pages[name]["lang"] == language, name
        assert Path(pages[name]["screenshot"]).stat().st_size > 0
        # axe-core really ran its rules here (a blocked injection would find nothing).
        assert pages[name]["rules_passed"] >= 10, name
    # The walk really got where it claims: logged in, stepped up, approved.
    assert pages["account-midden"]["url"].split("?")[0].endswith("/account")
    assert pages["desk-application"]["url"].split("?")[0].rsplit("/", 1)[0].endswith(
        "/desk/applications")
    overflowing = {page["name"]: page["overflow_320px"] for page in result["pages"]
                   if page["overflow_320px"]}
    assert overflowing == {}, "pages that scroll sideways at 320 CSS px (WCAG 1.4.10)"
    violations = [page for page in result["pages"] if page["violations"]]
    assert violations == [], "axe-core found WCAG 2.1 A/AA violations:\n" + _describe(violations)


EIDAS_PAGES = {
    "eidas-choose-midden": 200, "eidas-choose": 200, "sim-choose": 200, "eidas-cancelled": 200,
    "eidas-external": 200, "eidas-link": 200, "eidas-link-request": 200, "eidas-link-code": 200,
    "desk-eidas-link": 200, "desk-eidas-link-errors": None,
}


@pytest.fixture
def live_eidas(make_app: Callable[..., Flask], settings: Any, tmp_path: Path,
               node_key_dir: Path) -> Iterator[tuple[Flask, str, str]]:
    """The gateway with the eIDAS route on, a test relying party (/rp/start, /rp/done) and
    the eIDAS node simulator, each on a loopback server of its own."""
    from gateway.eidas_sim.app import create_sim_app
    from tests.eidas_helpers import add_rp, write_policies

    gateway, node = _Deferred(), _Deferred()
    servers = [make_server("127.0.0.1", 0, gateway, threaded=True),
               make_server("127.0.0.1", 0, node, threaded=True)]
    base, node_url = (f"http://127.0.0.1:{s.server_port}" for s in servers)
    gateway.app = make_app(issuer=base, policies_dir=write_policies(
        tmp_path, node_metadata_url=node_url + "/metadata"))
    gateway.app.config["TESTING"] = False
    add_rp(gateway.app)
    node.app = create_sim_app(settings.with_overrides(issuer=base), base_url=node_url,
                              key_dir=node_key_dir)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield gateway.app, base, node_url
    finally:
        for server in servers:
            server.shutdown()


@pytest.mark.parametrize("language", ["nl", "en"])
def test_every_eidas_page_has_no_wcag21_aa_violations(
    browser_tools: str, live_eidas: tuple[Flask, str, str], tmp_path: Path, language: str
) -> None:
    """The eIDAS route's pages (issue 8), the simulated node's and the linking pages, walked by
    a person who cancels once, comes back once and then logs in with a German test eID."""
    app, base, node_url = live_eidas
    result = _run(browser_tools, app, base, tmp_path, "eidas", language,
                  eidas={"node": node_url})
    pages = {page["name"]: page for page in result["pages"]}
    assert sorted(set(EIDAS_PAGES) - set(pages)) == [], "pages the walk did not reach"
    for name, status in EIDAS_PAGES.items():
        if status is not None:
            assert pages[name]["status"] == status, (name, pages[name]["url"])
        assert pages[name]["lang"] == language, name
        assert pages[name]["rules_passed"] >= 10, name
    assert pages["sim-choose"]["url"].startswith(node_url)
    overflowing = {page["name"]: page["overflow_320px"] for page in result["pages"]
                   if page["overflow_320px"]}
    assert overflowing == {}, "pages that scroll sideways at 320 CSS px (WCAG 1.4.10)"
    violations = [page for page in result["pages"] if page["violations"]]
    assert violations == [], "axe-core found WCAG 2.1 A/AA violations:\n" + _describe(violations)


def test_login_with_the_keyboard_alone(
    browser_tools: str, live_app: tuple[Flask, str], tmp_path: Path
) -> None:
    app, base = live_app
    result = _run(browser_tools, app, base, tmp_path, "keyboard", "en")["keyboard"]
    reached = result["reached"]
    names = [r["name"] for r in reached]
    # Skip link first, then the header, then the form: username, password, the button.
    assert reached and reached[0]["tag"] == "a", names
    assert {"username", "password"} <= set(names), names
    assert len(reached) == len(result["focusable"]), ("Tab missed elements", result["focusable"])
    # The focus order follows the page (WCAG 2.4.3): no positive tabindex jumps around.
    assert [r["index"] for r in reached] == sorted(r["index"] for r in reached), names
    no_indicator = [r for r in reached if not r["indicator"] or not r["visible"]]
    assert no_indicator == [], f"no visible focus indicator on: {no_indicator}"
    assert result["on_username"], "Tab never reached the username field"
    assert result["logged_in"], f"Enter did not log in: ended on {result['final_url']}"
