"""The one clock every expiry, validity window and rate-limit window reads.

Tests move it with `frozen(...)`/`advance(...)` instead of sleeping; production reads the
system clock in UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_frozen: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return _frozen if _frozen is not None else datetime.now(UTC)


@contextmanager
def frozen(at: datetime | None = None) -> Iterator[None]:
    """Freeze the clock (for tests); `advance` moves it while frozen."""
    global _frozen
    previous = _frozen
    _frozen = (at or datetime.now(UTC)).astimezone(UTC)
    try:
        yield
    finally:
        _frozen = previous


def advance(delta: timedelta) -> None:
    global _frozen
    if _frozen is None:
        raise RuntimeError("advance() needs a frozen clock")
    _frozen = _frozen + delta
