"""The application state machine refuses every transition not in its table."""

from __future__ import annotations

import itertools

import pytest

from gateway.desks.applications import (
    FINAL,
    TRANSITIONS,
    ApplicationState,
    IllegalTransition,
    transition,
)
from gateway.desks.models import Application

ALL = list(ApplicationState)


@pytest.mark.parametrize(("start", "to"), list(itertools.product(ALL, ALL)))
def test_every_pair(start: ApplicationState, to: ApplicationState) -> None:
    app = Application(status=start)
    if to in TRANSITIONS[start]:
        transition(app, to)
        assert app.status == to
    else:
        with pytest.raises(IllegalTransition):
            transition(app, to)
        assert app.status == start


def test_final_states() -> None:
    assert {ApplicationState.APPROVED, ApplicationState.REJECTED, ApplicationState.EXPIRED} == FINAL
    # Approval only after a passing document check.
    assert ApplicationState.APPROVED not in TRANSITIONS[ApplicationState.SUBMITTED]
