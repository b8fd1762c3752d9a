"""Assurance levels: DigiD's four levels, their numbers and their SAML, OIDC and eIDAS names.

The table is part of the public interface (shared/INTERFACE.md, "Assurance levels") and is
also kept as policy (`policies/levels.yaml`) so that an operator sees it; the policy is checked
against this table at start-up, so the two can never drift apart.
"""

from __future__ import annotations

from enum import IntEnum

from pydantic import BaseModel, ConfigDict, model_validator


class Level(IntEnum):
    BASIS = 10
    MIDDEN = 20
    SUBSTANTIEEL = 25
    HOOG = 30

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def context_class(self) -> str:
        """SAML AuthnContextClassRef, also the OIDC `acr` value."""
        return _CLASS_REFS[self]

    @property
    def eidas_loa(self) -> str | None:
        return _EIDAS[self]

    @classmethod
    def from_label(cls, label: str) -> Level:
        return cls[label.upper()]

    @classmethod
    def from_context_class(cls, uri: str) -> Level | None:
        for level, ref in _CLASS_REFS.items():
            if ref == uri:
                return level
        return None

    @classmethod
    def from_eidas_loa(cls, uri: str) -> Level | None:
        for level, loa in _EIDAS.items():
            if loa is not None and loa == uri:
                return level
        return None


_CLASS_REFS = {
    Level.BASIS: "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
    Level.MIDDEN: "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    Level.SUBSTANTIEEL: "urn:oasis:names:tc:SAML:2.0:ac:classes:Smartcard",
    Level.HOOG: "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI",
}

_EIDAS: dict[Level, str | None] = {
    Level.BASIS: None,
    Level.MIDDEN: "http://eidas.europa.eu/LoA/low",
    Level.SUBSTANTIEEL: "http://eidas.europa.eu/LoA/substantial",
    Level.HOOG: "http://eidas.europa.eu/LoA/high",
}


class LevelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    numeric: int
    saml_context_class: str
    eidas_loa: str | None = None


class LevelsPolicy(BaseModel):
    """`policies/levels.yaml`: must state exactly the interface's table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: list[LevelEntry]

    @model_validator(mode="after")
    def _matches_interface(self) -> LevelsPolicy:
        expected = [
            LevelEntry(
                name=lv.label, numeric=int(lv), saml_context_class=lv.context_class,
                eidas_loa=lv.eidas_loa,
            )
            for lv in Level
        ]
        if self.levels != expected:
            raise ValueError(
                "must list basis, midden, substantieel and hoog exactly as the interface's "
                "table (name, numeric, saml_context_class, eidas_loa)"
            )
        return self
