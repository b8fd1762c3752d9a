"""The population register: is this BSN registered as a non-resident, and under which name,
date of birth and nationality (issue 4, item 2)?

In the Netherlands that answer comes from the BRP and its register of non-residents (RNI),
reached through RvIG's services. That cannot be reached from here, so the gateway talks to a
`PopulationRegister` protocol with two implementations:

- `TableRegister`: the `population_register` table, filled by operators with
  `gateway register import FILE.csv` (`import_csv`); the demo seeds it from
  `gateway/data/register-demo.csv`;
- `MemoryRegister`: a fixed set of records, for tests and development.

A real connection to the BRP is one more implementation of the same protocol.

Names are compared the way a passport prints them: ICAO Doc 9303 Part 3 section 6 maps
letters with diacritics to A-Z, either by the recommended transliteration (Ä→AE, Ö→OE, Ü→UE,
Å→AA, Æ→AE, Ø→OE, ß→SS, Þ→TH, Œ→OE, Ĳ→IJ; other accents dropped) or, as many states do,
by dropping the diacritic (Ü→U). The register keeps a person's own spelling ("Müller"), the
MRZ has "MUELLER" or "MULLER", and an officer may type either. `match_register` therefore
compares upper-case, transliterated forms and accepts a name when any of its spellings agree;
hyphens, spaces and `<` separate name parts alike and apostrophes are dropped ("O'Brien" is
OBRIEN in the MRZ). Any other difference, even one letter, is a mismatch.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway import clock
from gateway.db import Base, UTCDateTime
from gateway.desks.bsn import BsnError, is_valid_bsn, normalise_bsn
from gateway.desks.documents import Mismatch, Problem, ProblemCode, normalise_state
from gateway.desks.mrz import Mrz
from gateway.desks.policy import EligibilityPolicy
from gateway.i18n import lazy_gettext

if TYPE_CHECKING:
    from flask import Flask

#: The demo's fictional people (gateway demo seeds them).
DEMO_CSV = Path(__file__).resolve().parent.parent / "data" / "register-demo.csv"

CSV_COLUMNS = ("bsn", "surname", "given_names", "date_of_birth", "nationality", "non_resident")
#: Size bounds of one import: the whole file is validated before anything is written, so it is
#: held in memory. 200,000 people is a large consulate district several times over; a bigger
#: register belongs behind a real PopulationRegister implementation, not a CSV file.
MAX_ROWS = 200_000
MAX_IMPORT_CHARS = 50_000_000
MAX_NAME_CHARS = 200
#: Bad lines listed in one error; the rest are counted.
MAX_REPORTED_ERRORS = 20
#: BSNs fetched per query while upserting.
_UPSERT_CHUNK = 500

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ALPHA3 = re.compile(r"[A-Z]{3}")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


# --- the protocol -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterRecord:
    """What the register says about one person. Personal data: kept out of repr()."""

    bsn: str = field(repr=False)
    surname: str = field(repr=False)
    given_names: str = field(repr=False)
    date_of_birth: date = field(repr=False)
    #: ISO 3166-1 alpha-3.
    nationality: str
    #: Registered as a non-resident (RNI) rather than living in a Dutch municipality.
    non_resident: bool


class PopulationRegister(Protocol):
    def lookup(self, bsn: str) -> RegisterRecord | None:
        """The person registered under `bsn` (9-digit normal form), or None.

        None also for anything that is not a valid BSN: a lookup never raises for bad input.
        Implementations that reach a remote service raise their own error when it cannot be
        reached, so the caller refuses rather than treats the person as unknown.
        """
        ...


class MemoryRegister:
    """A fixed set of records (tests, development)."""

    def __init__(self, records: Iterable[RegisterRecord] = ()) -> None:
        self._records = {r.bsn: r for r in records}

    def lookup(self, bsn: str) -> RegisterRecord | None:
        if not is_valid_bsn(bsn):
            return None
        return self._records.get(bsn)


class RegisterPerson(Base):
    """One person in the operator-filled register (`population_register`)."""

    __tablename__ = "population_register"

    #: The primary key is the index every lookup at application and at the desk uses.
    bsn: Mapped[str] = mapped_column(sa.String(9), primary_key=True)
    surname: Mapped[str] = mapped_column(sa.String(MAX_NAME_CHARS))
    given_names: Mapped[str] = mapped_column(sa.String(MAX_NAME_CHARS))
    date_of_birth: Mapped[date] = mapped_column(sa.Date)
    nationality: Mapped[str] = mapped_column(sa.String(3))
    non_resident: Mapped[bool] = mapped_column(sa.Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def record(self) -> RegisterRecord:
        return RegisterRecord(
            bsn=self.bsn,
            surname=self.surname,
            given_names=self.given_names,
            date_of_birth=self.date_of_birth,
            nationality=self.nationality,
            non_resident=self.non_resident,
        )


class TableRegister:
    """The `population_register` table, read through the caller's session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def lookup(self, bsn: str) -> RegisterRecord | None:
        if not is_valid_bsn(bsn):
            return None
        person = self._session.get(RegisterPerson, bsn)
        return person.record() if person is not None else None


# --- comparing with the register ---------------------------------------------------------------


@dataclass(frozen=True)
class EnteredPerson:
    """Who the applicant says they are, or what their document says (`from_mrz`)."""

    surname: str = field(repr=False)
    given_names: str = field(repr=False)
    date_of_birth: date = field(repr=False)
    nationality: str

    @classmethod
    def from_mrz(cls, mrz: Mrz) -> EnteredPerson:
        return cls(mrz.surname, mrz.given_names, mrz.birth_date, mrz.nationality)


#: ICAO 9303 Part 3, section 6: the recommended transliterations that are not simply "drop
#: the accent" (applied to upper case).
_ICAO_MULTI = {
    "Ä": "AE", "Å": "AA", "Æ": "AE", "Ö": "OE", "Ø": "OE", "Ü": "UE",
    "ẞ": "SS", "Þ": "TH", "Œ": "OE", "Ĳ": "IJ",
}
#: Letters without a Unicode decomposition, for the "drop the diacritic" spelling.
_PLAIN = {
    "Æ": "AE", "Ø": "O", "ẞ": "SS", "Þ": "TH", "Œ": "OE", "Ĳ": "IJ",
    "Ł": "L", "Đ": "D", "Ð": "D", "Ħ": "H", "Ŀ": "L", "Ŧ": "T", "Ŋ": "N",
}
_NOT_LETTERS = re.compile(r"[^A-Z]+")
_APOSTROPHES = re.compile(r"['’‘`´ʼ]")


def _fold(name: str, table: dict[str, str]) -> str:
    upper = name.replace("ß", "SS").upper()
    mapped = "".join(table.get(c, c) for c in upper)
    # Letters without a Unicode decomposition (Ø, Ł, Þ, ...) need an explicit mapping; all
    # others lose their accents through NFKD below.
    mapped = "".join(_PLAIN.get(c, c) for c in mapped)
    stripped = "".join(
        c for c in unicodedata.normalize("NFKD", mapped) if not unicodedata.combining(c)
    )
    stripped = _APOSTROPHES.sub("", stripped)
    return _NOT_LETTERS.sub(" ", stripped).strip()


def name_forms(name: str) -> frozenset[str]:
    """The MRZ spellings a name can have: ICAO-recommended transliteration and plain."""
    return frozenset({_fold(name, _ICAO_MULTI), _fold(name, {})})


def names_match(a: str, b: str) -> bool:
    """True when two spellings of a name could be the same name (see the module docstring)."""
    forms_a, forms_b = name_forms(a), name_forms(b)
    return bool(forms_a & forms_b) and "" not in forms_a


def match_register(record: RegisterRecord, entered: EnteredPerson) -> list[Mismatch]:
    """Every field where the register and the applicant (or their document) disagree."""
    mismatches: list[Mismatch] = []
    if not names_match(record.surname, entered.surname):
        mismatches.append(
            Mismatch("surname", lazy_gettext("The surname differs from the population register."))
        )
    if not names_match(record.given_names, entered.given_names) and (
        record.given_names.strip() or entered.given_names.strip()
    ):
        mismatches.append(
            Mismatch(
                "given_names",
                lazy_gettext("The given names differ from the population register."),
            )
        )
    if record.date_of_birth != entered.date_of_birth:
        mismatches.append(
            Mismatch(
                "date_of_birth",
                lazy_gettext("The date of birth differs from the population register."),
            )
        )
    if normalise_state(record.nationality) != normalise_state(entered.nationality):
        mismatches.append(
            Mismatch(
                "nationality",
                lazy_gettext("The nationality differs from the population register."),
            )
        )
    return mismatches


def register_problems(
    record: RegisterRecord | None, eligibility: EligibilityPolicy
) -> list[Problem]:
    """Why the register does not allow an account from abroad; empty when it does."""
    if record is None:
        return [
            Problem(
                ProblemCode.NOT_IN_REGISTER,
                lazy_gettext(
                    "This BSN is not in the population register. Check the number, or contact"
                    " the RNI desk to be registered."
                ),
            )
        ]
    if eligibility.require_non_resident_registration and not record.non_resident:
        return [
            Problem(
                ProblemCode.NOT_NON_RESIDENT,
                lazy_gettext(
                    "This person is registered as living in the Netherlands. Apply for an account"
                    " through the normal route instead."
                ),
            )
        ]
    return []


# --- importing a CSV file -------------------------------------------------------------------


@dataclass(frozen=True)
class ImportReport:
    rows: int
    inserted: int
    updated: int
    unchanged: int


class RegisterImportError(Exception):
    """The file was refused and nothing was written. `errors` are (line number, reason); line
    0 is the file as a whole. str() is one line, without any value from the file (it may reach
    a log)."""

    def __init__(self, errors: list[tuple[int, str]], more: int = 0) -> None:
        self.errors = errors
        self.more = more
        total = len(errors) + more
        listed = "; ".join(f"line {n}: {reason}" if n else reason for n, reason in errors)
        tail = f"; and {more} more" if more else ""
        super().__init__(
            f"{total} problem{'s' if total != 1 else ''}, nothing imported: {listed}{tail}"
        )


class _Errors:
    def __init__(self) -> None:
        self.listed: list[tuple[int, str]] = []
        self.more = 0

    def add(self, line: int, reason: str) -> None:
        if len(self.listed) < MAX_REPORTED_ERRORS:
            self.listed.append((line, reason))
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.listed)


def _text_problem(value: str, column: str, *, required: bool) -> str | None:
    if required and not value:
        return f"{column}: empty"
    if len(value) > MAX_NAME_CHARS:
        return f"{column}: longer than {MAX_NAME_CHARS} characters"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp") for c in value):
        return f"{column}: contains a control character"
    if value and not _fold(value, {}):
        return f"{column}: has no Latin letters"
    return None


def _parse_row(
    fields: dict[str, str], line: int, today: date, errors: _Errors
) -> RegisterRecord | None:
    ok = True
    bsn = ""
    try:
        bsn = normalise_bsn(fields["bsn"])
    except BsnError as exc:
        ok = False
        reason = "not 8 or 9 digits" if exc.reason == "format" else "fails the eleven-test"
        errors.add(line, f"bsn: {reason}")

    surname = fields["surname"].strip()
    given_names = fields["given_names"].strip()
    for value, column, required in (
        (surname, "surname", True),
        (given_names, "given_names", False),
    ):
        problem = _text_problem(value, column, required=required)
        if problem:
            ok = False
            errors.add(line, problem)

    born: date | None = None
    raw_date = fields["date_of_birth"].strip()
    if _ISO_DATE.fullmatch(raw_date):
        try:
            born = date.fromisoformat(raw_date)
        except ValueError:
            born = None
    if born is None:
        ok = False
        errors.add(line, "date_of_birth: not a date in the form YYYY-MM-DD")
    elif born > today or born.year < 1850:
        ok = False
        errors.add(line, "date_of_birth: in the future or before 1850")

    nationality = fields["nationality"].strip()
    if not _ALPHA3.fullmatch(nationality):
        ok = False
        errors.add(line, "nationality: not an ISO 3166-1 alpha-3 code in capitals (NLD, DEU, ...)")

    flag = fields["non_resident"].strip().lower()
    if flag not in _TRUE | _FALSE:
        ok = False
        errors.add(line, "non_resident: not true or false")

    if not ok or born is None:
        return None
    return RegisterRecord(bsn, surname, given_names, born, nationality, flag in _TRUE)


def read_csv(file: IO[str], *, today: date | None = None) -> list[RegisterRecord]:
    """Validate a whole register file; the records, or `RegisterImportError` naming every bad
    line (up to MAX_REPORTED_ERRORS). Writes nothing."""
    today = today or clock.now().date()
    try:
        text = file.read(MAX_IMPORT_CHARS + 1)
    except UnicodeDecodeError:
        raise RegisterImportError([(0, "the file is not UTF-8 text")]) from None
    if len(text) > MAX_IMPORT_CHARS:
        raise RegisterImportError([(0, f"the file is larger than {MAX_IMPORT_CHARS} characters")])
    text = text.removeprefix("\ufeff")  # a byte-order mark from spreadsheet exports

    errors = _Errors()
    records: list[RegisterRecord] = []
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows = 0
    previous_end = 0
    try:
        for row in reader:
            # A quoted field may span lines: name the line the record starts on.
            line, previous_end = previous_end + 1, reader.line_num
            if not row:
                continue
            if header is None:
                header = [name.strip().lower() for name in row]
                if sorted(header) != sorted(CSV_COLUMNS):
                    raise RegisterImportError(
                        [(line, "the header must name the columns " + ",".join(CSV_COLUMNS))]
                    )
                continue
            rows += 1
            if rows > MAX_ROWS:
                errors.add(0, f"more than {MAX_ROWS} rows")
                break
            if len(row) != len(header):
                errors.add(line, f"has {len(row)} fields, the header has {len(header)}")
                continue
            record = _parse_row(dict(zip(header, row, strict=True)), line, today, errors)
            if record is None:
                continue
            if record.bsn in first_line:
                errors.add(line, f"bsn: already on line {first_line[record.bsn]}")
                continue
            first_line[record.bsn] = line
            records.append(record)
    except csv.Error:
        errors.add(previous_end + 1, "not valid CSV (an unclosed quote or a stray character)")
    if errors:
        raise RegisterImportError(errors.listed, errors.more)
    if header is None:
        raise RegisterImportError([(0, "the file is empty")])
    return records


def import_csv(session: Session, file: IO[str], *, today: date | None = None) -> ImportReport:
    """Validate the file (`read_csv`), then insert or update every person by BSN, all within
    the caller's transaction: the import is all or nothing. People not in the file are kept.
    """
    records = read_csv(file, today=today)
    now = clock.now()
    inserted = updated = unchanged = 0
    for start in range(0, len(records), _UPSERT_CHUNK):
        chunk = records[start : start + _UPSERT_CHUNK]
        existing = {
            p.bsn: p
            for p in session.scalars(
                sa.select(RegisterPerson).where(RegisterPerson.bsn.in_([r.bsn for r in chunk]))
            )
        }
        for record in chunk:
            values: dict[str, Any] = {
                "surname": record.surname,
                "given_names": record.given_names,
                "date_of_birth": record.date_of_birth,
                "nationality": record.nationality,
                "non_resident": record.non_resident,
            }
            person = existing.get(record.bsn)
            if person is None:
                session.add(RegisterPerson(bsn=record.bsn, updated_at=now, **values))
                inserted += 1
            elif person.record() == record:
                unchanged += 1
            else:
                for key, value in values.items():
                    setattr(person, key, value)
                person.updated_at = now
                updated += 1
        session.flush()
    return ImportReport(rows=len(records), inserted=inserted, updated=updated, unchanged=unchanged)


def seed_demo(app: Flask) -> list[str]:
    """`gateway demo`: load the fictional people of `DEMO_CSV` (idempotent) and say who they
    are, so a tester knows which BSN, name and date of birth to apply with."""
    from gateway.db import get_db

    with get_db(app).begin() as session, DEMO_CSV.open(encoding="utf-8", newline="") as fh:
        import_csv(session, fh)
    with DEMO_CSV.open(encoding="utf-8", newline="") as fh:
        records = read_csv(fh)
    lines = ["", f"Population register (demo, {DEMO_CSV.name}): BSN, name, date of birth"]
    for r in records:
        note = "" if r.non_resident else "   (lives in NL: refused)"
        lines.append(
            f"  {r.bsn}  {r.given_names} {r.surname}, {r.date_of_birth.isoformat()},"
            f" {r.nationality}{note}"
        )
    return lines
