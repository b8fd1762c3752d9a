"""The desk's two blueprints: `desk` (staff pages under /desk) and `desk_api` (JSON under
/desk/api, bearer tokens, CSRF-exempt), and the navigation of the staff pages.

Adding desk pages or API calls: put the views in a module of your own that decorates them on
`desk` or `desk_api` (`from gateway.desks.blueprint import desk, desk_api`) with
`gateway.desks.auth.staff_required` / `api_staff_required`, and add the module's name to
`VIEW_MODULES`. `init_app` imports every module there before it registers the blueprints
(Flask refuses routes added to a blueprint after its first registration). A page that belongs
in the staff navigation calls `nav_item(...)` at import time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, request

from gateway.web import csrf_exempt

#: Modules whose views live on `desk` or `desk_api`; imported before registration.
VIEW_MODULES: tuple[str, ...] = (
    "gateway.desks.auth",
    "gateway.desks.views",
    "gateway.desks.eidas_link_desk",
    "gateway.desks.account_desk",
    "gateway.desks.suspension_desk",
    "gateway.desks.eidas_unlink_desk",
    "gateway.desks.api",
    "gateway.desks.openapi",
)

#: Longest value read from a field of a desk page's form; the services set the real limits.
MAX_FIELD_CHARS = 1000


def form_field(name: str) -> str:
    """A text field of the desk page's form, cut at MAX_FIELD_CHARS ("" when absent)."""
    value = request.form.get(name, "")
    return value[:MAX_FIELD_CHARS] if isinstance(value, str) else ""


desk = Blueprint("desk", __name__, url_prefix="/desk")
#: Bearer tokens are never sent by a browser on its own, so the API needs no CSRF token.
# (csrf_exempt marks blueprints too; its annotation only names view functions.)
desk_api = csrf_exempt(Blueprint("desk_api", __name__, url_prefix="/desk/api"))  # type: ignore[type-var]


@dataclass(frozen=True)
class NavItem:
    endpoint: str
    #: A lazy_gettext string, translated when the page is drawn.
    label: Any
    #: Roles that see the item; empty for every role.
    roles: frozenset[str]


NAV_ITEMS: list[NavItem] = []


def nav_item(endpoint: str, label: Any, *roles: str) -> None:
    """Show a link to `endpoint` in the staff navigation (to `roles` only, when given)."""
    if all(item.endpoint != endpoint for item in NAV_ITEMS):
        NAV_ITEMS.append(NavItem(endpoint, label, frozenset(roles)))


def nav_for(role: str) -> list[NavItem]:
    """The items `role` sees, in the order of VIEW_MODULES (then as each module adds them),
    whichever module happened to be imported first."""
    views = current_app.view_functions

    def position(item: NavItem) -> int:
        view = views.get(item.endpoint)
        module = getattr(view, "__module__", "")
        return VIEW_MODULES.index(module) if module in VIEW_MODULES else len(VIEW_MODULES)

    return sorted((item for item in NAV_ITEMS if not item.roles or role in item.roles),
                  key=position)


def init_app(app: Flask) -> None:
    for name in VIEW_MODULES:
        importlib.import_module(name)
    app.register_blueprint(desk)
    app.register_blueprint(desk_api)
    app.jinja_env.globals["desk_nav"] = nav_for
