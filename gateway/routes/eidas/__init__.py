"""The eIDAS identity route: people with a national eID of another EU/EEA member state log in
through the eIDAS network, the gateway acting as a SAML service provider toward an eIDAS node
(issue 8, items 2-4 and 6; eIDAS technical specifications v1.2; docs/eidas.md).

- `saml`: the signed AuthnRequest and the SP's signed metadata (`/eidas/metadata`).
- `response`: every check of the node's Response (signature, wrapping, addressing, time,
  encryption, LoA, attributes), free of Flask.
- `pending`: the sent request bound to its login flow, single use, expiring.
- `node`: the node's metadata, fetched with a timeout and cached.
- `service` and `views`: the glue between those, the login flow and HTTP (`/eidas/acs`).

The route reaches midden, substantieel and hoog: eIDAS LoA low, substantial and high
(`gateway.levels.Level.from_eidas_loa`, the mapping DigiD itself uses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.i18n import lazy_gettext
from gateway.levels import Level
from gateway.routes.eidas.config import EidasConfig, parse_config
from gateway.settings import Settings

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.wrappers import Response as BaseResponse

    from gateway.flows.login import LoginFlow


class EidasRoute:
    """The `eidas` entry point of the group `gateway.routes`."""

    name = "eidas"
    label = lazy_gettext("European eID (eIDAS)")
    levels = frozenset({Level.MIDDEN, Level.SUBSTANTIEEL, Level.HOOG})
    kind = "external"
    choice_template: str | None = "eidas/choice.html"

    def __init__(self) -> None:
        self.config: EidasConfig | None = None

    def configure(self, settings: Settings, config: Mapping[str, Any]) -> None:
        parsed = parse_config(config)
        if not settings.dev and not parsed.node_metadata_url.startswith("https://"):
            # The node's metadata carries the keys every answer is checked with: outside dev
            # it comes over TLS and signed by a trust anchor (docs/eidas.md, "Trust").
            raise ValueError("node_metadata_url: must be an https URL outside dev")
        if not settings.dev and not parsed.node_metadata_signing_certificates:
            raise ValueError(
                "node_metadata_signing_certificates: required outside dev (the certificates "
                "the node's metadata is signed with)"
            )
        trust = tuple(
            _load_certificate(Path(settings.policies_dir) / path)
            for path in parsed.node_metadata_signing_certificates
        )
        self.config = replace(parsed, node_metadata_signing_certificates=trust)

    def init_app(self, app: Flask) -> None:
        from gateway.routes.eidas import service, views

        if self.config is None:
            raise RuntimeError("the eidas route is not configured")
        service.init_app(app, self.config)
        views.init_app(app)

    def start(self, flow: LoginFlow, form: Mapping[str, str]) -> BaseResponse:
        from gateway.routes.eidas import service

        return service.start(self, flow, form)


def _load_certificate(path: Path) -> str:
    """The absolute path of a readable PEM certificate, else ValueError naming the field."""
    from cryptography import x509

    field = "node_metadata_signing_certificates"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path.name} ({exc.strerror})") from None
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(f"{field}: {path.name} is not a PEM certificate") from None
    return str(path.resolve())


ROUTE = EidasRoute()

__all__ = ["ROUTE", "EidasRoute"]
