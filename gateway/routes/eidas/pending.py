"""A sent AuthnRequest, bound to the login flow that sent it, until its answer comes back.

Kept in the shared store (any instance may receive the answer), keyed by a digest of the
request ID, with a lifetime no longer than the flow's (`PENDING_LIFETIME` at most), so an
unanswered request disappears on its own. `take` removes it atomically: exactly one answer
per request is ever accepted; a late or second answer finds nothing and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Final

from gateway.store import SharedStore

#: How long the citizen may spend at the foreign node (the flow's own 15 minutes bound it too).
PENDING_LIFETIME: Final = timedelta(minutes=15)
_PREFIX: Final = "eidas:pending:"
_FLOW_PREFIX: Final = "eidas:pending-flow:"


@dataclass(frozen=True)
class PendingRequest:
    request_id: str
    flow_id: str
    #: The level asked for (numeric, gateway.levels.Level); an answer below it is refused.
    level: int
    country: str
    relay_state: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingRequest | None:
        try:
            raw = json.loads(data)
            return cls(
                request_id=str(raw["request_id"]), flow_id=str(raw["flow_id"]),
                level=int(raw["level"]), country=str(raw["country"]),
                relay_state=str(raw["relay_state"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _key(request_id: str) -> str:
    return _PREFIX + hashlib.sha256(request_id.encode("utf-8")).hexdigest()


def _flow_key(flow_id: str) -> str:
    return _FLOW_PREFIX + hashlib.sha256(flow_id.encode("utf-8")).hexdigest()


def remember(store: SharedStore, pending: PendingRequest, ttl: timedelta) -> None:
    """Keep `pending`; it becomes its flow's only answerable request (a person who went back
    and chose the eIDAS route again has sent a newer one: the older one's answer is late)."""
    lifetime = min(ttl, PENDING_LIFETIME)
    store.set(_key(pending.request_id), pending.to_bytes(), lifetime)
    store.set(_flow_key(pending.flow_id), pending.request_id.encode("utf-8"), lifetime)


def is_current(store: SharedStore, pending: PendingRequest) -> bool:
    """Is `pending` the newest request its flow sent?"""
    current = store.get(_flow_key(pending.flow_id))
    return current is not None and hmac.compare_digest(
        current, pending.request_id.encode("utf-8")
    )


def peek(store: SharedStore, request_id: str) -> PendingRequest | None:
    data = store.get(_key(request_id))
    return PendingRequest.from_bytes(data) if data is not None else None


def take(store: SharedStore, request_id: str) -> bool:
    """Consume the pending request; False when it was gone already (a second answer)."""
    return store.take(_key(request_id)) is not None


def forget(store: SharedStore, request_id: str) -> None:
    store.delete(_key(request_id))
