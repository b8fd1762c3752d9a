"""Shared state for every instance: counters, replay caches and short-lived values.

Nothing that several gateway processes must agree on lives in process memory (issue 2,
"Serving"): rate limits, lockout counters, replay caches of SAML request IDs, single-use
artifacts and server-side sessions go through a `SharedStore`. Two implementations: the
database (the default) and Redis (when GATEWAY_REDIS_URL is set). Both are atomic per
operation and both fail closed: an unreachable store raises `StoreUnavailable`, and callers
refuse the action rather than let it through.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol


class StoreUnavailable(Exception):
    """The shared store cannot be reached; the caller must refuse (fail closed)."""


class SharedStore(Protocol):
    def incr(self, key: str, ttl: timedelta, amount: int = 1) -> int:
        """Atomically add `amount` to the counter `key` and return the new value.

        A counter that does not exist (or has expired) starts from zero and lives for `ttl`
        from this first increment; later increments do not extend it (a fixed window).
        """
        ...

    def count(self, key: str) -> int:
        """The counter's current value, 0 when absent or expired."""
        ...

    def add_once(self, key: str, ttl: timedelta) -> bool:
        """Remember `key` for `ttl`. True when it was new, False when already present (replay)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: timedelta) -> None: ...

    def take(self, key: str) -> bytes | None:
        """Get and delete in one atomic step (single-use values such as SAML artifacts)."""
        ...

    def delete(self, key: str) -> None: ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        ...
