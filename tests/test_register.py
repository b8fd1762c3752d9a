"""The population register: protocol, table, CSV import, CLI and matching
(gateway.desks.register)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from gateway import db
from gateway.cli import main
from gateway.db import get_db
from gateway.desks import register as register_module
from gateway.desks.bsn import is_valid_bsn
from gateway.desks.documents import ProblemCode
from gateway.desks.mrz import parse_mrz
from gateway.desks.policy import DocumentType, EligibilityPolicy
from gateway.desks.register import (
    CSV_COLUMNS,
    DEMO_CSV,
    EnteredPerson,
    MemoryRegister,
    PopulationRegister,
    RegisterImportError,
    RegisterPerson,
    RegisterRecord,
    TableRegister,
    import_csv,
    match_register,
    names_match,
    read_csv,
    register_problems,
    seed_demo,
)
from gateway.settings import Settings

TODAY = date(2025, 6, 1)
HEADER = ",".join(CSV_COLUMNS) + "\n"

MULLER = RegisterRecord("999929586", "Müller", "Jürgen", date(1975, 1, 21), "DEU", True)
JANSEN = RegisterRecord("999900109", "Jansen", "Pieter Jan", date(1968, 3, 14), "NLD", True)
RESIDENT = RegisterRecord("999973800", "van den Berg", "Willem", date(1971, 4, 23), "NLD", False)


def csv_file(*rows: str, header: str = HEADER) -> io.StringIO:
    return io.StringIO(header + "".join(row + "\n" for row in rows))


def count(app: Flask) -> int:
    with get_db(app).begin() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(RegisterPerson)) or 0


# --- the protocol: one contract, every implementation ---------------------------------------


@pytest.fixture(params=["memory", "table"])
def make_register(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[list[RegisterRecord]], PopulationRegister]]:
    sessions = []
    # Requested here, not in the factory, so the app (and its database) is torn down after the
    # sessions below are closed: an open session would block PostgreSQL's TRUNCATE.
    app: Flask | None = request.getfixturevalue("app") if request.param == "table" else None

    def factory(records: list[RegisterRecord]) -> PopulationRegister:
        if app is None:
            return MemoryRegister(records)
        with get_db(app).begin() as session:
            for r in records:
                session.add(
                    RegisterPerson(
                        bsn=r.bsn, surname=r.surname, given_names=r.given_names,
                        date_of_birth=r.date_of_birth, nationality=r.nationality,
                        non_resident=r.non_resident, updated_at=sa.func.now(),
                    )
                )
        session = get_db(app).sessionmaker()
        sessions.append(session)
        return TableRegister(session)

    yield factory
    for session in sessions:
        session.close()


def test_contract_finds_registered_people(
    make_register: Callable[[list[RegisterRecord]], PopulationRegister],
) -> None:
    register = make_register([MULLER, JANSEN, RESIDENT])
    assert register.lookup(MULLER.bsn) == MULLER
    assert register.lookup(RESIDENT.bsn) == RESIDENT
    found = register.lookup(JANSEN.bsn)
    assert found is not None
    assert isinstance(found.date_of_birth, date)
    assert (found.surname, found.given_names, found.nationality) == ("Jansen", "Pieter Jan", "NLD")
    assert found.non_resident is True


NOT_FOUND = [
    "999936955",  # valid, not registered
    "999929587",  # a registered BSN with its last digit changed
    "99992958",  # not the normal form
    " 999929586",
    "999.929.586",
    "",
    "000000000",
    "９９９９２９５８６",
    "999929586' OR '1'='1",
    "9" * 10_000,
]


def test_contract_unknown_or_malformed_bsn_is_none(
    make_register: Callable[[list[RegisterRecord]], PopulationRegister],
) -> None:
    register = make_register([MULLER])
    for bsn in NOT_FOUND:
        assert register.lookup(bsn) is None, bsn


def test_record_repr_leaks_no_personal_data() -> None:
    text = repr(MULLER)
    assert "999929586" not in text and "Müller" not in text and "1975" not in text


# --- import --------------------------------------------------------------------------------


def test_demo_file_imports_and_reimports(app: Flask) -> None:
    with get_db(app).begin() as session, DEMO_CSV.open(encoding="utf-8", newline="") as fh:
        report = import_csv(session, fh, today=TODAY)
    assert (report.rows, report.inserted, report.updated, report.unchanged) == (10, 10, 0, 0)
    with get_db(app).begin() as session, DEMO_CSV.open(encoding="utf-8", newline="") as fh:
        report = import_csv(session, fh, today=TODAY)
    assert (report.inserted, report.updated, report.unchanged) == (0, 0, 10)
    assert count(app) == 10


def test_demo_file_people() -> None:
    with DEMO_CSV.open(encoding="utf-8", newline="") as fh:
        records = read_csv(fh, today=TODAY)
    assert len(records) == 10
    assert all(is_valid_bsn(r.bsn) and r.bsn.startswith("9999") for r in records)
    nationalities = {r.nationality for r in records}
    assert {"NLD", "DEU", "BEL", "ESP"} <= nationalities
    assert [r.non_resident for r in records].count(False) == 1


def test_upsert_updates_by_bsn_and_keeps_others(app: Flask) -> None:
    with get_db(app).begin() as session:
        import_csv(session, csv_file(
            "999900109,Jansen,Pieter Jan,1968-03-14,NLD,true",
            "999907475,de Vries,Anna Maria,1990-11-02,NLD,true",
        ), today=TODAY)
    with get_db(app).begin() as session:
        report = import_csv(session, csv_file(
            "999900109,Jansen,Pieter Jan,1968-03-14,NLD,false",
            "999914844,Bakker,Sophie,2001-06-30,NLD,yes",
        ), today=TODAY)
    assert (report.inserted, report.updated, report.unchanged) == (1, 1, 0)
    with get_db(app).begin() as session:
        register = TableRegister(session)
        jansen = register.lookup("999900109")
        assert jansen is not None and jansen.non_resident is False
        assert register.lookup("999907475") is not None  # not in the second file: kept
        assert register.lookup("999914844") is not None


def test_eight_digit_bsn_gets_its_leading_zero_and_columns_may_be_reordered(app: Flask) -> None:
    header = "surname,bsn,given_names,date_of_birth,nationality,non_resident\n"
    with get_db(app).begin() as session:
        import_csv(session, csv_file("Visser,11111112,Eva,1980-01-01,NLD,TRUE", header=header),
                   today=TODAY)
    with get_db(app).begin() as session:
        found = TableRegister(session).lookup("011111112")
    assert found is not None and found.surname == "Visser"


def test_byte_order_mark_and_crlf_are_accepted() -> None:
    text = "\ufeff" + HEADER.replace("\n", "\r\n") + "999900109,Jansen,Pieter,1968-03-14,NLD,1\r\n"
    assert len(read_csv(io.StringIO(text, newline=""), today=TODAY)) == 1


def test_one_bad_line_and_nothing_is_imported(app: Flask) -> None:
    with pytest.raises(RegisterImportError) as info, get_db(app).begin() as session:
        import_csv(session, csv_file(
            "999900109,Jansen,Pieter Jan,1968-03-14,NLD,true",
            "999907475,de Vries,Anna Maria,1990-11-02,NLD,true",
            "999914845,Bakker,Sophie,2001-06-30,NLD,true",
        ), today=TODAY)
    assert info.value.errors == [(4, "bsn: fails the eleven-test")]
    assert count(app) == 0


CONTROL = "surname: contains a control character"
GIVEN_CONTROL = "given_names: contains a control character"
NOT_A_DATE = "date_of_birth: not a date in the form YYYY-MM-DD"
OUT_OF_RANGE = "date_of_birth: in the future or before 1850"
BAD_HEADER = "the header must name the columns " + ",".join(CSV_COLUMNS)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("12345,Jansen,Pieter,1968-03-14,NLD,true", "bsn: not 8 or 9 digits"),
        ("999900108,Jansen,Pieter,1968-03-14,NLD,true", "bsn: fails the eleven-test"),
        ("000000000,Jansen,Pieter,1968-03-14,NLD,true", "bsn: fails the eleven-test"),
        ("999900109,,Pieter,1968-03-14,NLD,true", "surname: empty"),
        ("999900109,Jan\x00sen,Pieter,1968-03-14,NLD,true", CONTROL),
        ('999900109,"Jan\nsen",Pieter,1968-03-14,NLD,true', CONTROL),
        ("999900109,Jan\u200bsen,Pieter,1968-03-14,NLD,true", CONTROL),
        ("999900109,1234,Pieter,1968-03-14,NLD,true", "surname: has no Latin letters"),
        ("999900109,Иванов,Pieter,1968-03-14,NLD,true", "surname: has no Latin letters"),
        ("999900109," + "J" * 201 + ",Pieter,1968-03-14,NLD,true",
         "surname: longer than 200 characters"),
        ("999900109,Jansen,Pi\x1bter,1968-03-14,NLD,true", GIVEN_CONTROL),
        ("999900109,Jansen,Pieter,14-03-1968,NLD,true", NOT_A_DATE),
        ("999900109,Jansen,Pieter,19680314,NLD,true", NOT_A_DATE),
        ("999900109,Jansen,Pieter,2023-02-29,NLD,true", NOT_A_DATE),
        ("999900109,Jansen,Pieter,２０２０-01-01,NLD,true",
         NOT_A_DATE),
        ("999900109,Jansen,Pieter,2025-06-02,NLD,true", OUT_OF_RANGE),
        ("999900109,Jansen,Pieter,1849-12-31,NLD,true", OUT_OF_RANGE),
        ("999900109,Jansen,Pieter,1968-03-14,NL,true",
         "nationality: not an ISO 3166-1 alpha-3 code in capitals (NLD, DEU, ...)"),
        ("999900109,Jansen,Pieter,1968-03-14,nld,true",
         "nationality: not an ISO 3166-1 alpha-3 code in capitals (NLD, DEU, ...)"),
        ("999900109,Jansen,Pieter,1968-03-14,NLD,maybe", "non_resident: not true or false"),
        ("999900109,Jansen,Pieter,1968-03-14,NLD,", "non_resident: not true or false"),
        ("999900109,Jansen,Pieter,1968-03-14,NLD", "has 5 fields, the header has 6"),
        ("999900109,Jansen,Pieter,1968-03-14,NLD,true,x", "has 7 fields, the header has 6"),
        ('999900109,"Jansen,Pieter,1968-03-14,NLD,true',
         "not valid CSV (an unclosed quote or a stray character)"),
    ],
)
def test_each_bad_row_is_named_by_line(row: str, reason: str) -> None:
    good = "999907475,de Vries,Anna Maria,1990-11-02,NLD,true"
    with pytest.raises(RegisterImportError) as info:
        read_csv(csv_file(good, row), today=TODAY)
    assert (3, reason) in info.value.errors
    assert "999900109" not in str(info.value)  # values from the file never reach the message
    assert "\n" not in str(info.value)


def test_every_bad_line_is_listed_up_to_a_limit() -> None:
    rows = [f"12345{i},X,Y,1968-03-14,NLD,true" for i in range(30)]
    with pytest.raises(RegisterImportError) as info:
        read_csv(csv_file(*rows), today=TODAY)
    assert [line for line, _ in info.value.errors] == list(range(2, 22))
    assert info.value.more == 10
    assert str(info.value).startswith("30 problems, nothing imported: line 2: ")
    assert str(info.value).endswith("; and 10 more")


def test_repeated_bsn_names_the_first_line() -> None:
    with pytest.raises(RegisterImportError) as info:
        read_csv(csv_file(
            "999900109,Jansen,Pieter,1968-03-14,NLD,true",
            "999907475,de Vries,Anna,1990-11-02,NLD,true",
            "99990010 9,Jansen,Piet,1968-03-14,NLD,true",
        ), today=TODAY)
    assert info.value.errors == [(4, "bsn: already on line 2")]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ('"bsn,surname\n', "not valid CSV (an unclosed quote or a stray character)"),
        ("bsn,surname\n", BAD_HEADER),
        (HEADER.replace("\n", ",extra\n"), BAD_HEADER),
        (HEADER.replace("surname", "bsn"), BAD_HEADER),
    ],
)
def test_bad_files(text: str, reason: str) -> None:
    with pytest.raises(RegisterImportError) as info:
        read_csv(io.StringIO(text), today=TODAY)
    assert [r for _, r in info.value.errors] == [reason]


def test_size_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(register_module, "MAX_ROWS", 2)
    rows = [
        "999900109,Jansen,Pieter,1968-03-14,NLD,true",
        "999907475,de Vries,Anna,1990-11-02,NLD,true",
        "999914844,Bakker,Sophie,2001-06-30,NLD,true",
    ]
    with pytest.raises(RegisterImportError) as info:
        read_csv(csv_file(*rows), today=TODAY)
    assert info.value.errors == [(0, "more than 2 rows")]
    monkeypatch.setattr(register_module, "MAX_ROWS", 10)
    monkeypatch.setattr(register_module, "MAX_IMPORT_CHARS", 100)
    with pytest.raises(RegisterImportError) as info:
        read_csv(csv_file(*rows), today=TODAY)
    assert info.value.errors == [(0, "the file is larger than 100 characters")]


def test_not_utf8() -> None:
    raw = (HEADER + "999900109,M\xfcller,J,1968-03-14,DEU,true\n").encode("latin-1")
    with pytest.raises(RegisterImportError) as info:
        read_csv(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"), today=TODAY)
    assert info.value.errors == [(0, "the file is not UTF-8 text")]


@given(st.text(max_size=300))
def test_any_text_gives_records_or_an_import_error(text: str) -> None:
    try:
        records = read_csv(io.StringIO(HEADER + text), today=TODAY)
    except RegisterImportError as exc:
        assert "\n" not in str(exc)
        return
    assert all(is_valid_bsn(r.bsn) for r in records)


# --- the command line ----------------------------------------------------------------------


def run_cli(settings: Settings, *args: str) -> tuple[int, str]:
    env = {
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
        "GATEWAY_REDIS_PREFIX": settings.redis_prefix,
        **({"GATEWAY_REDIS_URL": settings.redis_url} if settings.redis_url else {}),
    }
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_cli_imports_and_prints_counts(app: Flask, settings: Settings) -> None:
    code, output = run_cli(settings, "register", "import", str(DEMO_CSV))
    assert code == 0
    assert output.strip() == "imported 10 people: 10 new, 0 updated, 0 unchanged"
    code, output = run_cli(settings, "register", "import", str(DEMO_CSV))
    assert output.strip() == "imported 10 people: 0 new, 0 updated, 10 unchanged"
    assert count(app) == 10


def test_cli_bad_file_is_one_line_and_imports_nothing(
    app: Flask, settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "999900109,Jansen,Pieter,1968-03-14,NLD,true\n"
                   "999900108,Jansen,Pieter,1968-03-14,NLD,true\n", encoding="utf-8")
    code, output = run_cli(settings, "register", "import", str(bad))
    assert code == 1
    assert output.count("\n") == 1
    assert output.startswith(f"gateway: {bad}: 1 problem, nothing imported: line 3: bsn:")
    assert "Traceback" not in output
    assert count(app) == 0


def test_cli_missing_file(app: Flask, settings: Settings, tmp_path: Path) -> None:
    code, output = run_cli(settings, "register", "import", str(tmp_path / "nope.csv"))
    assert code == 1
    assert output.startswith("gateway: ") and "cannot be read" in output
    assert output.count("\n") == 1


def test_register_table_is_a_model_module() -> None:
    assert "gateway.desks.register" in db.MODEL_MODULES


def test_seed_demo_is_idempotent_and_says_who_to_use(app: Flask) -> None:
    with app.app_context():
        first = seed_demo(app)
        second = seed_demo(app)
    assert first == second
    assert any("999900109" in line for line in first)
    assert count(app) == 10


# --- matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "entered"),
    [
        ("Müller", "MUELLER"),  # ICAO recommended transliteration
        ("Müller", "MULLER"),  # diacritic dropped, as many states do
        ("Müller", "müller"),
        ("Müller", "Mueller"),
        ("Straß", "STRASS"),
        ("García López", "GARCIA LOPEZ"),
        ("O'Brien", "OBRIEN"),
        ("O’Brien", "o'brien"),
        ("Karl-Heinz", "KARL HEINZ"),
        ("de Vries", "DE VRIES"),
        ("van  den Berg", "VAN DEN BERG"),
        ("Søren", "SOEREN"),
        ("Søren", "SOREN"),
        ("Ångström", "AANGSTROEM"),
        ("Łukasz", "LUKASZ"),
        ("Þór", "THOR"),
        ("Hélène", "HELENE"),
    ],
)
def test_names_that_match(register: str, entered: str) -> None:
    assert names_match(register, entered)


@pytest.mark.parametrize(
    ("register", "entered"),
    [
        ("Müller", "MILLER"),
        ("Müller", "MULLERS"),
        ("Müller", "MUELER"),
        ("de Vries", "VRIES"),
        ("Jansen", "JANSSEN"),
        ("Jansen", ""),
        ("", ""),
        ("Иванов", "Петров"),  # nothing left after transliteration: never a match
    ],
)
def test_names_that_do_not_match(register: str, entered: str) -> None:
    assert not names_match(register, entered)


def test_match_register_against_an_mrz() -> None:
    lines = [
        "P<NLDVAN<DEN<BERG<<WILLEM<<<<<<<<<<<<<<<<<<<",
        "XR12B8KP36NLD7104239M3106154999973800<<<<<28",
    ]
    entered = EnteredPerson.from_mrz(parse_mrz(lines, today=TODAY))
    assert match_register(RESIDENT, entered) == []


@pytest.mark.parametrize(
    ("entered", "fields"),
    [
        (EnteredPerson("MUELLER", "JUERGEN", date(1975, 1, 21), "D"), []),
        (EnteredPerson("Müller", "Jürgen", date(1975, 1, 21), "DEU"), []),
        (EnteredPerson("Miller", "Jürgen", date(1975, 1, 21), "DEU"), ["surname"]),
        (EnteredPerson("Müller", "Hans", date(1975, 1, 21), "DEU"), ["given_names"]),
        (EnteredPerson("Müller", "", date(1975, 1, 21), "DEU"), ["given_names"]),
        (EnteredPerson("Müller", "Jürgen", date(1975, 1, 22), "DEU"), ["date_of_birth"]),
        (EnteredPerson("Müller", "Jürgen", date(1975, 1, 21), "AUT"), ["nationality"]),
        (EnteredPerson("X", "Y", date(2000, 1, 1), "NLD"),
         ["surname", "given_names", "date_of_birth", "nationality"]),
    ],
)
def test_match_register_names_each_field(entered: EnteredPerson, fields: list[str]) -> None:
    mismatches = match_register(MULLER, entered)
    assert [m.field for m in mismatches] == fields
    assert all(str(m.message) for m in mismatches)


def test_no_given_names_on_either_side_is_a_match() -> None:
    record = RegisterRecord("999900109", "Jansen", "", date(1968, 3, 14), "NLD", True)
    assert match_register(record, EnteredPerson("JANSEN", "", date(1968, 3, 14), "NLD")) == []


def test_register_problems() -> None:
    policy = EligibilityPolicy(nationalities=["NLD"], accepted_documents=[DocumentType.PASSPORT])
    assert [p.code for p in register_problems(None, policy)] == [ProblemCode.NOT_IN_REGISTER]
    assert [p.code for p in register_problems(RESIDENT, policy)] == [ProblemCode.NOT_NON_RESIDENT]
    assert register_problems(JANSEN, policy) == []
    lenient = policy.model_copy(update={"require_non_resident_registration": False})
    assert register_problems(RESIDENT, lenient) == []
