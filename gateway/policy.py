"""Policies: the YAML files in `policies/`, validated with pydantic when the app starts.

Policy is data (ARCHITECTURE.md, habit 3): desks, eligibility, assurance levels, identity
routes and SMS rules live in files an operator can read and review. A file that is missing, is
not YAML, or does not match its model stops start-up with one line that names the file and the
field. Secrets never live here: they come from the environment (gateway.settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from gateway.accounts.policy import AccountsPolicy
from gateway.desks.policy import DesksPolicy, EligibilityPolicy
from gateway.levels import LevelsPolicy
from gateway.sms.policy import SmsPolicy

_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PolicyError(Exception):
    """A policy file is missing or invalid; str() is one line naming the file and the field."""


M = TypeVar("M", bound=BaseModel)


class RouteBlock(BaseModel):
    """One route's block in `routes.yaml`: `enabled`, plus the route's own settings, which
    the route checks itself (`IdentityRoute.configure`, gateway.flows.routes)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    enabled: StrictBool

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RoutesPolicy(BaseModel):
    """`routes.yaml`: which identity routes (entry points `gateway.routes`) are offered, in
    the order the choose-route page lists them. Unknown names are refused when the app
    builds its route registry (gateway.flows.routes.init_app), which knows the entry points."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: dict[str, RouteBlock]

#: file name -> model; every file is required.
POLICY_FILES: dict[str, type[BaseModel]] = {
    "accounts.yaml": AccountsPolicy,
    "desks.yaml": DesksPolicy,
    "eligibility.yaml": EligibilityPolicy,
    "levels.yaml": LevelsPolicy,
    "routes.yaml": RoutesPolicy,
    "sms.yaml": SmsPolicy,
}


@dataclass(frozen=True)
class Policies:
    accounts: AccountsPolicy
    desks: DesksPolicy
    eligibility: EligibilityPolicy
    levels: LevelsPolicy
    sms: SmsPolicy
    routes: RoutesPolicy


def load_file(path: Path, model: type[M]) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot be read ({exc})") from None
    try:
        # libyaml's safe loader when present: the same safe subset, ten times faster.
        data: Any = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise PolicyError(f"{path}: field {field}: {first['msg']}") from None


def load_policies(folder: Path) -> Policies:
    loaded = {name: load_file(folder / name, model) for name, model in POLICY_FILES.items()}
    return Policies(
        accounts=loaded["accounts.yaml"],  # type: ignore[arg-type]
        desks=loaded["desks.yaml"],  # type: ignore[arg-type]
        eligibility=loaded["eligibility.yaml"],  # type: ignore[arg-type]
        levels=loaded["levels.yaml"],  # type: ignore[arg-type]
        sms=loaded["sms.yaml"],  # type: ignore[arg-type]
        routes=loaded["routes.yaml"],  # type: ignore[arg-type]
    )
