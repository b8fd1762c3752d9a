"""GATEWAY_FORWARDED_ALLOW_IPS (gateway.forwarded): X-Forwarded-* only from allowed peers."""

from __future__ import annotations

import pytest
from flask import Flask, request

from gateway.app import create_app
from gateway.settings import Settings, SettingsError

CLAIMED = {
    "X-Forwarded-For": "198.51.100.7, 203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
}


def _app(settings: Settings, allow: str | None, hops: str = "1") -> Flask:
    environ = {**settings.environ, "GATEWAY_PROXY_HOPS": hops}
    environ.pop("GATEWAY_FORWARDED_ALLOW_IPS", None)
    if allow is not None:
        environ["GATEWAY_FORWARDED_ALLOW_IPS"] = allow
    app = create_app(settings.with_overrides(environ=environ))

    @app.get("/_seen")
    def _seen() -> dict[str, object]:
        return {
            "addr": request.remote_addr,
            "scheme": request.scheme,
            "host": request.host,
            "forwarded": sorted(k for k, _ in request.headers if k.startswith("X-Forwarded")),
        }

    return app


def _seen(app: Flask, peer: str) -> dict[str, object]:
    answer = app.test_client().get(
        "/_seen", headers=CLAIMED, environ_base={"REMOTE_ADDR": peer}, base_url="http://gw.test"
    )
    assert answer.status_code == 200
    seen: dict[str, object] = answer.get_json()
    return seen


BELIEVED = {"addr": "203.0.113.9", "scheme": "https", "host": "evil.example"}
IGNORED = {"scheme": "http", "host": "gw.test", "forwarded": []}


@pytest.mark.parametrize(
    ("allow", "peer", "believed"),
    [
        (None, "127.0.0.1", True),  # the default: a proxy on the same host
        (None, "::ffff:127.0.0.1", True),  # the same, on a dual-stack socket
        (None, "192.0.2.10", False),
        (None, "::1", False),
        ("10.0.0.5, 192.0.2.0/24", "192.0.2.10", True),
        ("10.0.0.5, 192.0.2.0/24", "10.0.0.5", True),
        ("10.0.0.5, 192.0.2.0/24", "10.0.0.6", False),
        ("10.0.0.5, 192.0.2.0/24", "127.0.0.1", False),
        ("2001:db8::/32", "2001:db8::7", True),
        ("2001:db8::/32", "2001:db9::7", False),
        ("*", "192.0.2.10", True),
        ("*", "2001:db9::7", True),
        ("127.0.0.1", "", False),  # no peer address (a unix socket): never believed
        ("127.0.0.1", "not an address", False),
    ],
)
def test_forwarded_headers_only_from_allowed_peers(
    settings: Settings, allow: str | None, peer: str, believed: bool
) -> None:
    seen = _seen(_app(settings, allow), peer)
    if believed:
        assert {k: seen[k] for k in BELIEVED} == BELIEVED
    else:
        assert seen == {**IGNORED, "addr": peer}


def test_without_proxies_nothing_is_believed(settings: Settings) -> None:
    seen = _seen(_app(settings, "*", hops="0"), "127.0.0.1")
    assert {k: seen[k] for k in ("addr", "scheme", "host")} == {
        "addr": "127.0.0.1", "scheme": "http", "host": "gw.test"
    }


@pytest.mark.parametrize(
    "value",
    ["localhost", "10.0.0.1,", "10.0.0.0/33", "*, 10.0.0.1", "300.1.1.1", "10.0.0.1 10.0.0.2"],
)
@pytest.mark.parametrize("hops", ["0", "1"])
def test_bad_allow_list_stops_start_up(settings: Settings, value: str, hops: str) -> None:
    bad = settings.with_overrides(environ={
        **settings.environ, "GATEWAY_PROXY_HOPS": hops, "GATEWAY_FORWARDED_ALLOW_IPS": value,
    })
    with pytest.raises(SettingsError, match=r"^GATEWAY_FORWARDED_ALLOW_IPS: ") as info:
        create_app(bad)
    assert "\n" not in str(info.value)
