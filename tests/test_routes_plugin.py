"""Identity routes as plugins (issue 8, item 1): the contract every registered route keeps
(ARCHITECTURE.md habit 2: one contract test over every implementation), and the registry
built from the entry points and policies/routes.yaml (unknown names and bad fields stop
start-up with a line naming the file and the field).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import yaml
from babel.support import Translations
from flask import Flask

from gateway.flows import routes
from gateway.flows.routes import (
    DESK_ACCOUNT,
    KINDS,
    RouteConfigError,
    build_registry,
    check_route,
    discover,
    get_registry,
)
from gateway.flows.types import RpRequest
from gateway.i18n import TRANSLATIONS_DIR
from gateway.levels import Level
from gateway.policy import PolicyError, load_policies
from gateway.settings import DEFAULT_POLICIES_DIR, Settings

ENTRY_POINTS = sorted(discover())
SHIPPED = yaml.safe_load((DEFAULT_POLICIES_DIR / "routes.yaml").read_text())["routes"]


def _dutch() -> Mapping[str, Any]:
    translations = Translations.load(str(TRANSLATIONS_DIR), ["nl"])
    catalog: Mapping[str, Any] = translations._catalog  # type: ignore[attr-defined]
    return catalog


# --- the contract, for every registered route ---------------------------------------------


def test_the_shipped_routes_are_registered() -> None:
    assert {"desk_account", "eidas"} <= set(ENTRY_POINTS)
    # Every route routes.yaml names is installed, and every installed one has a block.
    assert set(SHIPPED) == set(ENTRY_POINTS)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_route_keeps_the_contract(name: str, app: Flask, settings: Settings) -> None:
    route = discover()[name].load()
    check_route(route, name)  # the start-up check itself
    assert route.name == name
    assert isinstance(route.levels, frozenset) and route.levels
    assert route.levels <= set(Level)
    assert route.kind in KINDS
    if route.kind == "external":
        assert callable(route.start)
    else:
        assert callable(route.factors) and route.password_level in route.levels
    assert route.choice_template is None or isinstance(route.choice_template, str)
    # A bilingual label: English text with a Dutch translation.
    with app.test_request_context("/?lang=en"):
        english = str(route.label)
    with app.test_request_context("/?lang=nl"):
        dutch = str(route.label)
    assert english.strip() and dutch.strip()
    assert _dutch().get(english), f"no Dutch translation for {english!r}"
    # The shipped block of routes.yaml is accepted (without `enabled`, as start-up passes it).
    block = {k: v for k, v in SHIPPED[name].items() if k != "enabled"}
    route.configure(settings, block)
    # (Its choice_template renders inside its form: test_each_shipped_route_renders_...)


def test_a_route_refuses_a_setting_it_does_not_have(settings: Settings) -> None:
    with pytest.raises(ValueError, match=r"^colour: "):
        DESK_ACCOUNT.configure(settings, {"colour": "blue"})


# --- the registry -------------------------------------------------------------------------


class _Point:
    """An entry point stand-in that loads a given object."""

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj

    def load(self) -> Any:
        if isinstance(self.obj, Exception):
            raise self.obj
        return self.obj


class _External:
    name = "other"
    label = "Other"
    levels = frozenset({Level.MIDDEN, Level.SUBSTANTIEEL})
    kind = "external"
    choice_template = None
    configured: Mapping[str, Any] | None = None

    def configure(self, settings: Settings, config: Mapping[str, Any]) -> None:
        if "url" not in config:
            raise ValueError("url: is required")
        self.configured = config

    def init_app(self, app: Flask) -> None:
        pass

    def start(self, flow: Any, form: Mapping[str, str]) -> Any:
        raise NotImplementedError


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    return folder


def _write(folder: Path, routes_block: dict[str, Any]) -> None:
    (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes_block}, sort_keys=False))


def _build(settings: Settings, folder: Path, available: dict[str, Any]) -> Any:
    s = settings.with_overrides(policies_dir=folder)
    return build_registry(s, load_policies(folder), available)


def test_enabled_routes_are_loaded_configured_and_kept_in_order(
    settings: Settings, policies_dir: Path
) -> None:
    other = _External()
    _write(policies_dir, {"other": {"enabled": True, "url": "http://127.0.0.1:1/x"},
                          "desk_account": {"enabled": True},
                          "broken": {"enabled": False}})
    registry = _build(settings, policies_dir, {
        "desk_account": _Point("desk_account", DESK_ACCOUNT), "other": _Point("other", other),
        # Disabled: never loaded (its package may be missing), never configured.
        "broken": _Point("broken", ImportError("no module named broken")),
    })
    assert list(registry.routes) == ["other", "desk_account"]
    assert other.configured == {"url": "http://127.0.0.1:1/x"}


@pytest.mark.parametrize(("block", "field", "reason"), [
    ({"desk_account": {"enabled": True}, "wallet": {"enabled": False}}, "routes.wallet",
     "no such identity route"),
    ({"desk_account": {"enabled": "yes"}}, "routes.desk_account.enabled", "valid boolean"),
    ({"desk_account": {}}, "routes.desk_account.enabled", "required"),
    ({"desk_account": {"enabled": True, "colour": "blue"}}, "routes.desk_account.colour",
     "not a setting"),
    ({"other": {"enabled": True}}, "routes.other.url", "is required"),
    ({"desk_account": {"enabled": False}}, "routes", "enable at least one route"),
    ({"broken": {"enabled": True}}, "routes.broken", "cannot be loaded"),
    ({"misnamed": {"enabled": True}}, "routes.misnamed", "entry point name"),
])
def test_a_bad_routes_yaml_names_the_file_and_the_field(
    settings: Settings, policies_dir: Path, block: dict[str, Any], field: str, reason: str
) -> None:
    _write(policies_dir, block)
    available = {
        "desk_account": _Point("desk_account", DESK_ACCOUNT),
        "other": _Point("other", _External()),
        "broken": _Point("broken", ImportError("no module named broken")),
        "misnamed": _Point("misnamed", _External()),
    }
    with pytest.raises(PolicyError) as info:
        _build(settings, policies_dir, available)
    message = str(info.value)
    assert message.startswith(f"{policies_dir / 'routes.yaml'}: field {field}"), message
    assert reason in message
    assert "\n" not in message


def test_start_up_stops_on_a_bad_routes_yaml(make_app: Any, policies_dir: Path) -> None:
    _write(policies_dir, {"desk_account": {"enabled": True}, "wallet": {"enabled": True}})
    with pytest.raises(RouteConfigError, match=r"routes\.yaml: field routes\.wallet: "):
        make_app(policies_dir=policies_dir)


@pytest.mark.parametrize(("change", "problem"), [
    ({"name": "else"}, "name must be"),
    ({"kind": "magic"}, "kind must be"),
    ({"levels": frozenset({20})}, "levels must be"),
    ({"levels": frozenset()}, "levels must be"),
    ({"label": ""}, "label must be"),
    ({"start": None}, "start() is missing"),
    ({"choice_template": 3}, "choice_template must be"),
])
def test_a_route_that_breaks_the_contract_is_refused(change: dict[str, Any], problem: str) -> None:
    route = _External()
    for key, value in change.items():
        setattr(route, key, value)
    with pytest.raises(TypeError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_route(route, "other")


def test_an_account_route_needs_its_factors() -> None:
    route = _External()
    route.kind = "account"
    with pytest.raises(TypeError, match="factors"):
        check_route(route, "other")


def test_the_app_keeps_its_registry_and_calls_init_app(
    make_app: Any, policies_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Flask] = []

    class Tracked(_External):
        def init_app(self, app: Flask) -> None:
            calls.append(app)

    tracked = Tracked()
    found = dict(discover())
    found["other"] = _Point("other", tracked)
    monkeypatch.setattr(routes, "discover", lambda: found)
    block = {n: {"enabled": False} for n in SHIPPED}
    block["desk_account"] = {"enabled": True}
    block["other"] = {"enabled": True, "url": "http://127.0.0.1:1/"}
    _write(policies_dir, block)
    app = make_app(policies_dir=policies_dir)
    assert calls == [app]
    assert list(get_registry(app).routes) == ["desk_account", "other"]


# --- which routes a request is offered ------------------------------------------------------


def _request(levels: tuple[Level, ...], essential: bool = False, protocol: str = "oidc") -> Any:
    return RpRequest(rp_id="self" if protocol == "self" else "rp", protocol=protocol,
                     levels=levels, resume_url="/back", essential=essential)


def _registry() -> routes.RouteRegistry:
    other = _External()
    return routes.RouteRegistry({"desk_account": DESK_ACCOUNT, "other": other})


@pytest.mark.parametrize(("levels", "essential", "level", "offered"), [
    # "midden or higher", at midden: both; the external route would ask for midden.
    ((Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG), True, Level.MIDDEN, ["desk_account", "other"]),
    # basis or higher: the external route is offered too (it reaches midden, accepted).
    ((Level.BASIS, Level.MIDDEN, Level.SUBSTANTIEEL), True, Level.BASIS, ["desk_account", "other"]),
    # exactly basis, essential: only what reaches basis.
    ((Level.BASIS,), True, Level.BASIS, ["desk_account"]),
    # substantieel or higher: the account cannot.
    ((Level.SUBSTANTIEEL, Level.HOOG), True, Level.SUBSTANTIEEL, ["other"]),
    # exactly hoog, not essential: the flow logs in at the highest reachable (substantieel).
    ((Level.HOOG,), False, Level.SUBSTANTIEEL, ["other"]),
])
def test_routes_for_offers_what_can_reach_an_acceptable_level(
    levels: tuple[Level, ...], essential: bool, level: Level, offered: list[str]
) -> None:
    registry = _registry()
    request = _request(levels, essential)
    assert request.target(registry.reachable_levels(request)) == level
    assert [r.name for r in registry.routes_for(request, level)] == offered


def test_the_self_relying_party_is_offered_account_routes_only() -> None:
    registry = _registry()
    request = _request((Level.BASIS, Level.MIDDEN, Level.SUBSTANTIEEL), protocol="self")
    assert [r.name for r in registry.routes_for(request, Level.BASIS)] == ["desk_account"]
    assert registry.reachable_levels(request) == {Level.BASIS, Level.MIDDEN}
    assert registry.reachable_levels(_request((Level.BASIS,))) == {
        Level.BASIS, Level.MIDDEN, Level.SUBSTANTIEEL}


@pytest.mark.parametrize(("levels", "essential", "flow_level", "expected"), [
    ((Level.BASIS, Level.MIDDEN, Level.SUBSTANTIEEL), True, Level.BASIS, Level.MIDDEN),
    ((Level.SUBSTANTIEEL, Level.HOOG), True, Level.SUBSTANTIEEL, Level.SUBSTANTIEEL),
    ((Level.HOOG, Level.MIDDEN), True, Level.MIDDEN, Level.MIDDEN),
])
def test_route_level_is_the_lowest_acceptable(
    levels: tuple[Level, ...], essential: bool, flow_level: Level, expected: Level
) -> None:
    class Flow:
        request = _request(levels, essential)
        level = flow_level

    assert routes.route_level(Flow(), _External()) == expected  # type: ignore[arg-type]


def test_route_level_refuses_a_route_that_cannot_serve_the_flow() -> None:
    class Flow:
        request = _request((Level.HOOG,), essential=True)
        level = Level.HOOG

    with pytest.raises(ValueError):
        routes.route_level(Flow(), _External())  # type: ignore[arg-type]


def test_acceptable_levels() -> None:
    exact = _request((Level.MIDDEN,), essential=True)
    assert routes.acceptable(exact, Level.MIDDEN, Level.MIDDEN)
    assert not routes.acceptable(exact, Level.MIDDEN, Level.BASIS)
    assert not routes.acceptable(exact, Level.MIDDEN, Level.HOOG)  # essential: only as asked
    loose = _request((Level.MIDDEN,))
    assert routes.acceptable(loose, Level.MIDDEN, Level.HOOG)
    assert not routes.acceptable(loose, Level.MIDDEN, Level.BASIS)


def test_the_entry_points_are_real_entry_points() -> None:
    found = discover()
    assert all(isinstance(ep, EntryPoint) for ep in found.values())
    assert found["desk_account"].value == "gateway.flows.routes:DESK_ACCOUNT"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_shipped_route_renders_on_the_choice_page(
    make_app: Any, policies_dir: Path, name: str
) -> None:
    """Every route, enabled with its shipped block, appears on the choose-route page of a
    request it can serve, with its own fields inside its own form."""
    from tests.test_login_flow import add_test_rp

    block = {n: {**SHIPPED[n], "enabled": n == name} for n in SHIPPED}
    block["desk_account"]["enabled"] = True
    _write(policies_dir, block)
    app = make_app(policies_dir=policies_dir)
    add_test_rp(app)
    route = get_registry(app).get(name)
    assert route is not None
    # The lowest level it reaches, plus one the desk account reaches, so the page is shown.
    levels = sorted({min(route.levels), Level.MIDDEN} if route.kind == "external"
                    else {Level.MIDDEN})
    client = app.test_client()
    query = ",".join(lv.label for lv in levels)
    page = client.get(f"/test-rp/start?levels={query}&lang=en", follow_redirects=True)
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    if route.kind == "account" and len(get_registry(app).routes) == 1:
        assert 'name="password"' in body
        return
    start = body.index(f'id="route-{name}"')
    form = body[start:body.index("</form>", start)]
    assert f'name="route" value="{name}"' in form
    if route.choice_template:
        assert app.jinja_env.get_template(route.choice_template) is not None
        assert "<fieldset" in form and "<legend" in form and "<label" in form
