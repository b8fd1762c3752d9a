"""Policies: the shipped files load; a bad file stops start-up with one line naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.levels import Level
from gateway.policy import POLICY_FILES, PolicyError, load_policies
from gateway.settings import DEFAULT_POLICIES_DIR


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICIES_DIR, folder)
    return folder


def edit(folder: Path, name: str, change: object) -> None:
    path = folder / name
    data = yaml.safe_load(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def test_shipped_policies_load() -> None:
    p = load_policies(DEFAULT_POLICIES_DIR)
    codes = {d.code for d in p.desks.desks}
    # The DigiD desks of today: 14 abroad, 4 Caribbean, 6 in the Netherlands, and video.
    assert len(codes) == 25
    assert {"GB-LON", "US-WAS", "NL-SPL", "CW-WIL", "VIDEO"} <= codes
    kinds = [d.kind.value for d in p.desks.desks]
    assert (kinds.count("abroad"), kinds.count("caribbean"), kinds.count("netherlands")) == (
        14,
        4,
        6,
    )
    assert "NLD" in p.eligibility.nationalities and "DEU" in p.eligibility.nationalities
    assert "USA" not in p.eligibility.nationalities
    assert [e.name for e in p.levels.levels] == [lv.label for lv in Level]
    assert [str(d) for d in p.eligibility.accepted_documents] == ["passport", "identity_card"]


BAD_FIELDS = [
    ("accounts.yaml", lambda d: d["password"].__setitem__("min_length", 6), "password.min_length"),
    (
        "accounts.yaml",
        lambda d: d["password"]["argon2"].__setitem__("memory_cost_kib", 1024),
        "password.argon2.memory_cost_kib",
    ),
    (
        "desks.yaml",
        lambda d: d["desks"][0].__setitem__("timezone", "Mars/Olympus"),
        "desks.0.timezone",
    ),
    ("desks.yaml", lambda d: d["desks"][1].__setitem__("code", d["desks"][0]["code"]), "desks"),
    ("desks.yaml", lambda d: d["desks"][2].__setitem__("country", "Germany"), "desks.2.country"),
    ("desks.yaml", lambda d: d["desks"][0].__setitem__("kind", "moon"), "desks.0.kind"),
    ("eligibility.yaml", lambda d: d.__setitem__("nationalities", ["NL"]), "nationalities"),
    (
        "eligibility.yaml",
        lambda d: d.__setitem__("accepted_documents", ["driving_licence"]),
        "accepted_documents.0",
    ),
    ("eligibility.yaml", lambda d: d.__setitem__("surprise", True), "surprise"),
    ("levels.yaml", lambda d: d["levels"][1].__setitem__("numeric", 15), "(top level)"),
    ("levels.yaml", lambda d: d["levels"].pop(), "(top level)"),
    ("routes.yaml", lambda d: d["routes"].__setitem__("desk_account", {"enabled": "yes"}),
     "routes.desk_account.enabled"),
    ("sms.yaml", lambda d: d.__setitem__("code_ttl_seconds", 3600), "code_ttl_seconds"),
    ("sms.yaml", lambda d: d.__setitem__("no_such_limit", 1), "no_such_limit"),
]


@pytest.mark.parametrize(("name", "change", "field"), BAD_FIELDS)
def test_bad_field_names_file_and_field(
    policies: Path, name: str, change: object, field: str
) -> None:
    edit(policies, name, change)
    with pytest.raises(PolicyError) as info:
        load_policies(policies)
    message = str(info.value)
    assert message.startswith(str(policies / name) + ": ")
    assert f"field {field}" in message
    assert "\n" not in message


def test_every_policy_file_has_a_bad_field_test() -> None:
    assert {name for name, _, _ in BAD_FIELDS} == set(POLICY_FILES)


@pytest.mark.parametrize("name", sorted(POLICY_FILES))
def test_missing_file_is_named(policies: Path, name: str) -> None:
    (policies / name).unlink()
    with pytest.raises(PolicyError, match="policy file is missing"):
        load_policies(policies)


@pytest.mark.parametrize("name", sorted(POLICY_FILES))
def test_invalid_yaml_is_named(policies: Path, name: str) -> None:
    (policies / name).write_text("desks: [unclosed\n  - x: : :\n")
    with pytest.raises(PolicyError) as info:
        load_policies(policies)
    assert str(info.value).startswith(str(policies / name) + ": not valid YAML")


def test_start_up_stops_with_one_line(policies: Path, tmp_path: Path) -> None:
    edit(policies, "desks.yaml", lambda d: d["desks"][0].__setitem__("timezone", "Nowhere/Town"))
    result = CliRunner().invoke(
        main,
        ["serve", "--port", "18999"],
        env={"GATEWAY_POLICIES": str(policies), "GATEWAY_INSTANCE_DIR": str(tmp_path / "i")},
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("gateway: ") and "desks.yaml" in lines[0] and "timezone" in lines[0]
    assert "Traceback" not in result.output


def test_bad_variable_stops_cli_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["db", "upgrade"],
        env={"GATEWAY_INSTANCE_DIR": str(tmp_path), "GATEWAY_ISSUER": "gopher://x"},
    )
    assert result.exit_code == 1
    assert result.output.strip() == "gateway: GATEWAY_ISSUER: must be an http:// or https:// URL"
