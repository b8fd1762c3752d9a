"""Policy models for `policies/desks.yaml` and `policies/eligibility.yaml`.

Desks are where a citizen proves who they are once (an embassy or consulate, a desk in a
Dutch border municipality, Schiphol, or a video call). Eligibility says who may apply and which
documents a desk accepts.
"""

from __future__ import annotations

from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class DeskKind(StrEnum):
    ABROAD = "abroad"
    CARIBBEAN = "caribbean"
    NETHERLANDS = "netherlands"
    VIDEO = "video"


class Desk(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=r"^[A-Z][A-Z0-9-]{1,15}$")
    #: The desk's name in English, and in Dutch when it differs ("Embassy Paris",
    #: "Ambassade Parijs"); a place name alone ("Oranjestad (Aruba)") needs no Dutch form.
    name: str = Field(min_length=2, max_length=100)
    name_nl: str | None = Field(default=None, min_length=2, max_length=100)
    kind: DeskKind
    #: ISO 3166-1 alpha-2; None only for the video-call desk.
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    timezone: str

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def display_name(self, language: str) -> str:
        """The name a citizen reads: Dutch pages and messages get `name_nl` when there is one."""
        return self.name_nl if language == "nl" and self.name_nl else self.name

    @model_validator(mode="after")
    def _country_unless_video(self) -> Desk:
        if self.kind is not DeskKind.VIDEO and self.country is None:
            raise ValueError("a desk that is not the video-call desk needs a country")
        return self


class DesksPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    desks: list[Desk] = Field(min_length=1)

    @field_validator("desks")
    @classmethod
    def _unique_codes(cls, desks: list[Desk]) -> list[Desk]:
        codes = [d.code for d in desks]
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise ValueError(f"desk codes must be unique; repeated: {', '.join(dupes)}")
        return desks

    def get(self, code: str) -> Desk | None:
        return next((d for d in self.desks if d.code == code), None)


class DocumentType(StrEnum):
    PASSPORT = "passport"
    IDENTITY_CARD = "identity_card"


class EligibilityPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ISO 3166-1 alpha-3 nationality codes as printed in the MRZ (NLD, DEU, ...).
    nationalities: list[str] = Field(min_length=1)
    require_bsn: bool = True
    require_non_resident_registration: bool = True
    accepted_documents: list[DocumentType] = Field(min_length=1)

    @field_validator("nationalities")
    @classmethod
    def _alpha3(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if len(v) != 3 or not v.isalpha() or not v.isupper()]
        if bad:
            raise ValueError(f"nationalities must be ISO 3166-1 alpha-3 codes; not: {bad}")
        return value
