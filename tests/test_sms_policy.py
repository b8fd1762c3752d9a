"""`policies/sms.yaml`: the shipped values load, and a bad field names the file and the field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy import PolicyError, load_file
from gateway.settings import DEFAULT_POLICIES_DIR
from gateway.sms.policy import HourDay, NumberType, SmsPolicy

SHIPPED = DEFAULT_POLICIES_DIR / "sms.yaml"


@pytest.fixture
def sms_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "sms.yaml"
    shutil.copy(SHIPPED, path)
    return path


def test_shipped_policy() -> None:
    policy = load_file(SHIPPED, SmsPolicy)
    assert policy.code_ttl_seconds == 300 and policy.code_max_attempts == 3
    assert policy.resend_min_interval_seconds == 30
    assert policy.per_prefix.digits_dropped == 2
    assert policy.allowed_regions == [] and policy.blocked_regions == []
    assert policy.sms_number_types == [NumberType.MOBILE, NumberType.FIXED_LINE_OR_MOBILE]
    assert policy.voice_number_types == [NumberType.FIXED_LINE]
    # Generous to people: a few logins with a resend each, a household sharing a phone.
    assert policy.per_number.hour >= 3 and policy.max_accounts_per_number >= 2
    # Hard on pumping: few numbers of one range, a small budget for most countries.
    assert policy.per_prefix.max_distinct_numbers <= 10
    assert policy.country_budgets.default.day <= 1000
    assert policy.country_budgets.for_region("NL").day > policy.country_budgets.default.day
    assert policy.country_budgets.for_region("NG") == policy.country_budgets.default
    for region in ("CW", "AW", "SX", "BQ", "SR", "BE", "DE"):
        assert region in policy.country_budgets.overrides
    # Delivery records: about six months (gateway purge).
    assert policy.delivery_records.keep_days == 180


def test_empty_file_gives_the_defaults(sms_yaml: Path) -> None:
    sms_yaml.write_text("# nothing set\n")
    assert load_file(sms_yaml, SmsPolicy) == SmsPolicy()


def test_region_allowed() -> None:
    assert SmsPolicy().region_allowed("NG")
    policy = SmsPolicy(allowed_regions=["NL", "BE"], blocked_regions=["GB"])
    assert policy.region_allowed("BE")
    assert not policy.region_allowed("GB") and not policy.region_allowed("DE")


def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return change


BAD: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_set("code_ttl_seconds", value=601), "code_ttl_seconds"),
    (_set("code_ttl_seconds", value=30), "code_ttl_seconds"),
    (_set("code_ttl_seconds", value="300"), "code_ttl_seconds"),
    (_set("code_max_attempts", value=4), "code_max_attempts"),
    (_set("code_max_attempts", value=0), "code_max_attempts"),
    (_set("resend_min_interval_seconds", value=300), "resend_min_interval_seconds"),
    (_set("resend_min_interval_seconds", value=-1), "resend_min_interval_seconds"),
    (_set("max_accounts_per_number", value=0), "max_accounts_per_number"),
    (_set("max_accounts_per_number", value=True), "max_accounts_per_number"),
    (_set("per_number", "day", value=2), "per_number"),
    (_set("per_number", "minute", value=2), "per_number.minute"),
    (_set("per_account", value=5), "per_account"),
    (_set("per_ip", "hour", value=0), "per_ip.hour"),
    (_set("per_ip", "hour", value=2.5), "per_ip.hour"),
    (_set("per_prefix", "digits_dropped", value=0), "per_prefix.digits_dropped"),
    (_set("per_prefix", "window_minutes", value=0), "per_prefix.window_minutes"),
    (_set("per_prefix", "max_distinct_numbers", value=1), "per_prefix.max_distinct_numbers"),
    (_set("country_budgets", "default", "hour", value=-5), "country_budgets.default.hour"),
    (_set("country_budgets", "overrides", "UK", value={"hour": 1, "day": 1}),
     "country_budgets.overrides.UK.[key]"),
    (_set("country_budgets", "overrides", "NL", value={"hour": 10, "day": 5}),
     "country_budgets.overrides.NL"),
    (_set("allowed_regions", value=["NL", "XX"]), "allowed_regions.1"),
    (_set("allowed_regions", value=["nl"]), "allowed_regions.0"),
    (_set("allowed_regions", value=["NL", "NL"]), "allowed_regions"),
    (_set("blocked_regions", value=["001"]), "blocked_regions.0"),
    (_set("blocked_regions", value="GB"), "blocked_regions"),
    (lambda d: d.update(allowed_regions=["NL", "GB"], blocked_regions=["GB"]), "blocked_regions"),
    (_set("sms_number_types", value=["mobile", "premium_rate"]), "sms_number_types.1"),
    (_set("sms_number_types", value=["mobile", "voip"]), "sms_number_types.1"),
    (_set("sms_number_types", value=["fixed_line_or_mobile"]), "sms_number_types"),
    (_set("sms_number_types", value=["mobile", "mobile"]), "sms_number_types"),
    (_set("sms_number_types", value=["cellphone"]), "sms_number_types.0"),
    (_set("voice_number_types", value=["fixed_line", "mobile"]), "voice_number_types"),
    (_set("voice_number_types", value=["toll_free"]), "voice_number_types.0"),
    (_set("per_country", value={"hour": 1, "day": 1}), "per_country"),
    (_set("delivery_records", "keep_days", value=61), "delivery_records.keep_days"),
    (_set("delivery_records", "keep_days", value=367), "delivery_records.keep_days"),
    (_set("delivery_records", "keep_days", value=0), "delivery_records.keep_days"),
    (_set("delivery_records", "keep_days", value="180"), "delivery_records.keep_days"),
    (_set("delivery_records", "keep_days", value=True), "delivery_records.keep_days"),
    (_set("delivery_records", "keep_days", value=180.5), "delivery_records.keep_days"),
    (_set("delivery_records", "keep_weeks", value=26), "delivery_records.keep_weeks"),
    (_set("delivery_records", value=180), "delivery_records"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _, f in BAD])
def test_a_bad_field_names_the_file_and_the_field(
    sms_yaml: Path, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    data = yaml.safe_load(sms_yaml.read_text())
    change(data)
    sms_yaml.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError) as info:
        load_file(sms_yaml, SmsPolicy)
    message = str(info.value)
    assert message.startswith(f"{sms_yaml}: field {field}: "), message
    assert "sms.yaml" in message and "\n" not in message


def test_yaml_yes_is_not_a_count(sms_yaml: Path) -> None:
    # YAML 1.1 reads `yes` as true; a limit must not quietly become 1.
    sms_yaml.write_text("per_number: {hour: yes, day: 10}\n")
    with pytest.raises(PolicyError, match=r"field per_number\.hour"):
        load_file(sms_yaml, SmsPolicy)


def test_delivery_records_bounds_are_allowed(sms_yaml: Path) -> None:
    for days in (62, 366):
        sms_yaml.write_text(f"delivery_records: {{keep_days: {days}}}\n")
        assert load_file(sms_yaml, SmsPolicy).delivery_records.keep_days == days
    sms_yaml.write_text("delivery_records: {}\n")
    assert load_file(sms_yaml, SmsPolicy).delivery_records.keep_days == 180


def test_day_may_equal_hour() -> None:
    assert HourDay(hour=5, day=5).day == 5
