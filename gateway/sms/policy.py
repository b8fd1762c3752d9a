"""Policy model for `policies/sms.yaml`: which phones may receive codes, and the abuse limits.

Issue 3 (items 1, 2 and 5): the regions and number types that may receive a code, the code's
lifetime and attempts, the limits against SMS pumping and toll fraud, and how long each
message's delivery record is kept (`gateway purge`), kept as data an operator can review
(ARCHITECTURE.md, habit 3). Every value is checked when the app starts; an error names
`sms.yaml` and the field (through `gateway.policy.load_file`).

The limits themselves are enforced by `gateway.sms.limits`; this module only says what they are.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)


class NumberType(StrEnum):
    """phonenumbers' `PhoneNumberType` names, lower-cased (`Phone.number_type`)."""

    MOBILE = "mobile"
    FIXED_LINE_OR_MOBILE = "fixed_line_or_mobile"
    FIXED_LINE = "fixed_line"
    TOLL_FREE = "toll_free"
    PREMIUM_RATE = "premium_rate"
    SHARED_COST = "shared_cost"
    VOIP = "voip"
    PERSONAL_NUMBER = "personal_number"
    PAGER = "pager"
    UAN = "uan"
    VOICEMAIL = "voicemail"
    UNKNOWN = "unknown"


#: The only types a policy may open for codes. The others are refused whatever the policy says:
#: premium-rate, shared-cost and UAN numbers earn their owner money per message or call (the
#: toll-fraud pattern), toll-free and voicemail numbers cannot receive a code, and VoIP,
#: personal (forwarding) and pager numbers are cheap to obtain in bulk and easy to redirect,
#: so they do not prove possession of a phone (issue 3, item 1).
DELIVERABLE_TYPES = frozenset(
    {NumberType.MOBILE, NumberType.FIXED_LINE_OR_MOBILE, NumberType.FIXED_LINE}
)


def _known_region(value: str) -> str:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"unknown region {value!r}: use an ISO 3166-1 alpha-2 code in capitals that "
            "phonenumbers knows (NL, BE, US, ...)"
        )
    return value


#: ISO 3166-1 alpha-2, as phonenumbers names regions (so "GB", not "UK").
Region = Annotated[str, AfterValidator(_known_region)]


def _deliverable(value: NumberType) -> NumberType:
    if value not in DELIVERABLE_TYPES:
        raise ValueError(
            f"{value.value} numbers never receive codes; allowed: "
            + ", ".join(sorted(t.value for t in DELIVERABLE_TYPES))
        )
    return value


DeliverableType = Annotated[NumberType, AfterValidator(_deliverable)]


def _no_duplicates(values: list[str]) -> list[str]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


# Counts are StrictInt: YAML reads `yes` as true, and a limit must not silently become 1.


class HourDay(BaseModel):
    """At most `hour` in any rolling hour and `day` in any rolling 24 hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hour: StrictInt = Field(ge=1)
    day: StrictInt = Field(ge=1)

    @model_validator(mode="after")
    def _day_covers_hour(self) -> HourDay:
        if self.day < self.hour:
            raise ValueError(f"day ({self.day}) must be at least hour ({self.hour})")
        return self


class PrefixLimit(BaseModel):
    """Number-range velocity: pumping walks through consecutive numbers of one range.

    Numbers that are equal once their last `digits_dropped` digits are removed share a
    prefix; at most `max_distinct_numbers` different numbers of one prefix receive a code
    within `window_minutes`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    digits_dropped: StrictInt = Field(default=2, ge=1, le=4)
    window_minutes: StrictInt = Field(default=60, ge=1, le=1440)
    #: 2 at least: two members of one household may have consecutive numbers.
    max_distinct_numbers: StrictInt = Field(default=5, ge=2)


class CountryBudgets(BaseModel):
    """Per-country budget in SMS segments (what a provider bills), with a circuit breaker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: HourDay = Field(default_factory=lambda: HourDay(hour=60, day=400))
    overrides: dict[Region, HourDay] = Field(default_factory=dict)

    def for_region(self, region: str) -> HourDay:
        return self.overrides.get(region, self.default)


#: Bounds of `delivery_records.keep_days`. The shortest is longer than anything that reads
#: `sms_messages` over time: late delivery reports (SMSC validity, at most a week), a citizen's
#: "my code never came" (an activation letter's code is valid 20 days) and checking a provider's
#: monthly invoice per country against the messages of a whole month (two calendar months). The
#: longest, one year: past it a record serves nothing the service does (data minimisation).
DELIVERY_RECORDS_MIN_DAYS = 62
DELIVERY_RECORDS_MAX_DAYS = 366


class DeliveryRecords(BaseModel):
    """How long the delivery record of a message (`sms_messages`) is kept: `gateway purge`
    removes it `keep_days` after the message was queued, whatever its status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_days: StrictInt = Field(
        default=180, ge=DELIVERY_RECORDS_MIN_DAYS, le=DELIVERY_RECORDS_MAX_DAYS
    )


class SmsPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ISO 3166-1 alpha-2 regions; empty means every region the Netherlands can reach.
    allowed_regions: list[Region] = Field(default_factory=list)
    blocked_regions: list[Region] = Field(default_factory=list)
    max_accounts_per_number: StrictInt = Field(default=3, ge=1)
    #: Code lifetime in seconds; never more than 10 minutes (issue 3, NIST SP 800-63B 5.1.3).
    code_ttl_seconds: StrictInt = Field(default=300, ge=60, le=600)
    #: Wrong guesses per code; issue 3 item 2 fixes the ceiling at 3 (with 6 digits: 3 in 10^6).
    code_max_attempts: StrictInt = Field(default=3, ge=1, le=3)
    #: Shortest wait before a new code may be sent to the same flow.
    resend_min_interval_seconds: StrictInt = Field(default=30, ge=1)
    per_number: HourDay = Field(default_factory=lambda: HourDay(hour=5, day=10))
    per_account: HourDay = Field(default_factory=lambda: HourDay(hour=6, day=12))
    per_ip: HourDay = Field(default_factory=lambda: HourDay(hour=30, day=100))
    per_prefix: PrefixLimit = Field(default_factory=PrefixLimit)
    country_budgets: CountryBudgets = Field(default_factory=CountryBudgets)
    #: Number types that receive the code by SMS, and those that get a voice call.
    sms_number_types: list[DeliverableType] = Field(
        default_factory=lambda: [NumberType.MOBILE, NumberType.FIXED_LINE_OR_MOBILE]
    )
    voice_number_types: list[DeliverableType] = Field(
        default_factory=lambda: [NumberType.FIXED_LINE]
    )
    delivery_records: DeliveryRecords = Field(default_factory=DeliveryRecords)

    @field_validator("allowed_regions")
    @classmethod
    def _unique_allowed(cls, value: list[str]) -> list[str]:
        return _no_duplicates(value)

    @field_validator("blocked_regions")
    @classmethod
    def _not_both_allowed_and_blocked(cls, value: list[str], info: ValidationInfo) -> list[str]:
        _no_duplicates(value)
        both = sorted(set(value) & set(info.data.get("allowed_regions", [])))
        if both:
            raise ValueError(f"both allowed and blocked: {', '.join(both)}")
        return value

    @field_validator("resend_min_interval_seconds")
    @classmethod
    def _resend_within_ttl(cls, value: int, info: ValidationInfo) -> int:
        ttl = info.data.get("code_ttl_seconds")
        if ttl is not None and value >= ttl:
            raise ValueError(f"must be shorter than code_ttl_seconds ({ttl})")
        return value

    @field_validator("sms_number_types")
    @classmethod
    def _sms_reaches_mobiles(cls, value: list[NumberType]) -> list[NumberType]:
        _no_duplicates([str(v) for v in value])
        if NumberType.MOBILE not in value:
            raise ValueError("must include mobile")
        return value

    @field_validator("voice_number_types")
    @classmethod
    def _one_channel_per_type(
        cls, value: list[NumberType], info: ValidationInfo
    ) -> list[NumberType]:
        _no_duplicates([str(v) for v in value])
        both = sorted(str(t) for t in set(value) & set(info.data.get("sms_number_types", [])))
        if both:
            raise ValueError(f"in both sms_number_types and voice_number_types: {', '.join(both)}")
        return value

    def region_allowed(self, region: str) -> bool:
        if region in self.blocked_regions:
            return False
        return not self.allowed_regions or region in self.allowed_regions
