"""Which direct peers may set X-Forwarded-* (GATEWAY_FORWARDED_ALLOW_IPS).

The HTTP server (granian) passes forwarded headers through untouched; the app believes them
(werkzeug's ProxyFix, GATEWAY_PROXY_HOPS) only when the connection comes from an address in
GATEWAY_FORWARDED_ALLOW_IPS: comma-separated addresses or CIDRs, `*` for any peer, default
127.0.0.1. From any other peer the headers are dropped, so a client that reaches the gateway
past the proxy cannot forge its address, scheme or host.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from gateway.settings import SettingsError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW_IPS = "127.0.0.1"
#: Peer addresses whose verdict is remembered: a gateway talks to a few proxies all day.
PEER_CACHE_SIZE = 256


def allowed_peers(environ: Mapping[str, str]) -> tuple[Network, ...] | None:
    """GATEWAY_FORWARDED_ALLOW_IPS as networks, None for `*` (any peer); checked at start-up."""
    raw = environ.get("GATEWAY_FORWARDED_ALLOW_IPS", "").strip() or DEFAULT_ALLOW_IPS
    entries = [entry.strip() for entry in raw.split(",")]
    if entries == ["*"]:
        return None
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError:
        raise SettingsError(
            "GATEWAY_FORWARDED_ALLOW_IPS: must be * or comma-separated IP addresses or CIDRs"
        ) from None


class TrustedPeersOnly:
    """WSGI middleware: `trusted_app` (ProxyFix around `app`) for a connection from an allowed
    peer; otherwise `app` itself, with every X-Forwarded-* header removed."""

    def __init__(self, app: WSGIApplication, trusted_app: WSGIApplication,
                 allowed: tuple[Network, ...]) -> None:
        self._app = app
        self._trusted_app = trusted_app
        self._allowed = allowed
        self.trusted = functools.lru_cache(maxsize=PEER_CACHE_SIZE)(self._trusted)

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client on a dual-stack socket
        return any(address in network for network in self._allowed)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        if self.trusted(environ.get("REMOTE_ADDR") or ""):
            return self._trusted_app(environ, start_response)
        for key in [key for key in environ if key.startswith("HTTP_X_FORWARDED_")]:
            del environ[key]
        return self._app(environ, start_response)
