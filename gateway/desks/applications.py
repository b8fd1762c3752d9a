"""The application's life as an explicit state machine (ARCHITECTURE.md, habit 1).

    submitted --(document check passes)--> checked --(approve)--> approved
        |  ^------(a later check fails)-------'  |
        |                                         +--(reject)--> rejected
        +--(reject)--> rejected
        +--(desk code's 30 days end)--> expired   (also from checked)

`approved`, `rejected` and `expired` are final. Services change state only through
`transition`, which refuses anything not in `TRANSITIONS`.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.clock import now
from gateway.desks.models import Application


class ApplicationState(StrEnum):
    SUBMITTED = "submitted"
    CHECKED = "checked"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


TRANSITIONS: dict[ApplicationState, frozenset[ApplicationState]] = {
    ApplicationState.SUBMITTED: frozenset(
        {ApplicationState.SUBMITTED, ApplicationState.CHECKED, ApplicationState.REJECTED,
         ApplicationState.EXPIRED}
    ),
    ApplicationState.CHECKED: frozenset(
        {ApplicationState.CHECKED, ApplicationState.SUBMITTED, ApplicationState.APPROVED,
         ApplicationState.REJECTED, ApplicationState.EXPIRED}
    ),
    ApplicationState.APPROVED: frozenset(),
    ApplicationState.REJECTED: frozenset(),
    ApplicationState.EXPIRED: frozenset(),
}

FINAL = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)


class IllegalTransition(Exception):
    def __init__(self, current: str, wanted: str) -> None:
        super().__init__(f"application cannot go from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def transition(application: Application, to: ApplicationState) -> None:
    current = ApplicationState(application.status)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(current, to)
    application.status = to
    application.updated_at = now()
