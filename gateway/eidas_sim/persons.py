"""Fictitious test persons of the eIDAS node simulator: one per member state and level of assurance.

Attribute values follow the eIDAS SAML Attribute Profile (v1.2, natural persons):
PersonIdentifier `XX/YY/<id>` (XX the issuing state, YY the receiving state, here NL),
DateOfBirth as xs:date, Gender `Male`/`Female`/`Unspecified`, CurrentAddress as the structured
address type's parts. Names keep their diacritics: they are in Latin script, so no transliterated
second value is needed. Every person, number and address is made up;
identifiers only have the shape of the state's real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

LOA_LOW: Final = "http://eidas.europa.eu/LoA/low"
LOA_SUBSTANTIAL: Final = "http://eidas.europa.eu/LoA/substantial"
LOA_HIGH: Final = "http://eidas.europa.eu/LoA/high"
#: eIDAS levels of assurance in increasing order (Implementing Regulation (EU) 2015/1502).
LOA_ORDER: Final = (LOA_LOW, LOA_SUBSTANTIAL, LOA_HIGH)
LOA_NAMES: Final = {LOA_LOW: "low", LOA_SUBSTANTIAL: "substantial", LOA_HIGH: "high"}

#: The receiving state of every PersonIdentifier: the simulator answers a Dutch connector.
RECEIVING_STATE: Final = "NL"
#: The language a state's names are usually in, for the pages' `lang` attributes (WCAG 3.1.2).
NAME_LANGUAGES: Final = {
    "AT": "de", "BE": "nl", "DE": "de", "ES": "es", "FR": "fr", "IT": "it", "PL": "pl",
}


def loa_rank(loa: str) -> int:
    """0, 1, 2 for low, substantial, high; ValueError for anything else."""
    return LOA_ORDER.index(loa)


@dataclass(frozen=True)
class TestPerson:
    """A person the simulated node can authenticate, with the eID's level of assurance."""

    __test__ = False  # not a pytest test class, despite the name

    id: str
    country: str
    loa: str
    given_name: str
    family_name: str
    birthdate: str
    identifier: str
    birth_name: str | None = None
    place_of_birth: str | None = None
    gender: str | None = None
    #: CurrentAddressStructuredType parts, e.g. ("Thoroughfare", "Heidestraße").
    address: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: The name's language when it is not the state's usual one (a French name in Belgium).
    name_language: str | None = None

    @property
    def person_identifier(self) -> str:
        return f"{self.country}/{RECEIVING_STATE}/{self.identifier}"

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}"

    @property
    def language(self) -> str:
        return self.name_language or NAME_LANGUAGES.get(self.country, "")

    @property
    def loa_name(self) -> str:
        return LOA_NAMES[self.loa]


def _address(*parts: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(parts)


_PERSONS: Final = (
    # Germany: eID card (nPA) identifiers are opaque, service-specific strings.
    TestPerson(
        "de-low", "DE", LOA_LOW, "Erika", "Mustermann", "1964-08-12",
        "7a3c9e1f04b2d68e5f1a0c3b9d7e2f41", birth_name="Gabler", place_of_birth="Berlin",
        gender="Female",
        address=_address(("LocatorDesignator", "17"), ("Thoroughfare", "Heidestraße"),
                         ("PostName", "Köln"), ("PostCode", "51147"),
                         ("AdminunitFirstline", "DE")),
    ),
    TestPerson(
        "de-substantial", "DE", LOA_SUBSTANTIAL, "Jürgen", "Weiß", "1978-03-02",
        "c41e8b7a2d05f9367e1b4c8a0d2f6e95", place_of_birth="Görlitz", gender="Male",
    ),
    TestPerson(
        "de-high", "DE", LOA_HIGH, "Anna-Lena", "Schröder", "1990-11-23",
        "0f9d2a6c81e47b35d0c9a8e1f2b3c4d5", birth_name="Köhler", gender="Female",
        address=_address(("LocatorDesignator", "4a"), ("Thoroughfare", "Königsallee"),
                         ("PostName", "Düsseldorf"), ("PostCode", "40212"),
                         ("AdminunitFirstline", "DE")),
    ),
    # Spain: DNI number with its check letter.
    TestPerson("es-low", "ES", LOA_LOW, "José", "Martínez García", "1982-05-19", "99999142H"),
    TestPerson(
        "es-substantial", "ES", LOA_SUBSTANTIAL, "María Ángeles", "Núñez Peña", "1975-09-30",
        "99999018D", place_of_birth="Córdoba", gender="Female",
        address=_address(("LocatorDesignator", "12, 3º B"), ("Thoroughfare", "Calle de Alcalá"),
                         ("PostName", "Madrid"), ("PostCode", "28014"),
                         ("AdminunitFirstline", "ES")),
    ),
    TestPerson(
        "es-high", "ES", LOA_HIGH, "Iñaki", "Etxeberria Zubizarreta", "1969-01-07",
        "99999265Q", place_of_birth="Donostia-San Sebastián", gender="Male",
    ),
    # Italy: the codice fiscale, with the ETSI natural-person prefix SPID's node uses.
    TestPerson(
        "it-low", "IT", LOA_LOW, "Francesca", "Rossi", "1985-08-01",
        "TINIT-RSSFNC85M41H501X", gender="Female",
    ),
    TestPerson(
        "it-substantial", "IT", LOA_SUBSTANTIAL, "Niccolò", "D'Angelo", "1992-04-15",
        "TINIT-DNGNCL92D15F205K", place_of_birth="Milano", gender="Male",
        address=_address(("LocatorDesignator", "8"), ("Thoroughfare", "Via della Spiga"),
                         ("PostName", "Milano"), ("PostCode", "20121"),
                         ("AdminunitFirstline", "IT")),
    ),
    TestPerson(
        "it-high", "IT", LOA_HIGH, "Nicolò", "Cantù", "1958-12-24",
        "TINIT-CNTNCL58T24L219R", birth_name="Cantù", place_of_birth="Torino", gender="Male",
    ),
    # Belgium: national register number (11 digits).
    TestPerson("be-low", "BE", LOA_LOW, "Lotte", "Peeters", "1995-02-11", "95021112345"),
    TestPerson(
        "be-substantial", "BE", LOA_SUBSTANTIAL, "Hélène", "Lefèvre", "1971-07-04",
        "71070423456", place_of_birth="Liège", gender="Female", name_language="fr",
    ),
    TestPerson(
        "be-high", "BE", LOA_HIGH, "Jan", "Van den Broeck", "1963-10-28", "63102834567",
        gender="Male",
        address=_address(("LocatorDesignator", "21"), ("Thoroughfare", "Meir"),
                         ("PostName", "Antwerpen"), ("PostCode", "2000"),
                         ("AdminunitFirstline", "BE")),
    ),
    # Austria: a sector-specific identifier (bPK-like, without '/').
    TestPerson(
        "at-low", "AT", LOA_LOW, "Günther", "Gruber", "1980-06-06", "bPKzZ8rT4eQw1KdN5uVxY2mA7c",
    ),
    TestPerson(
        "at-substantial", "AT", LOA_SUBSTANTIAL, "Theresa", "Hölzl", "1987-03-21",
        "bPKq3LfH9sWb6JtE0pRcG4nD8y", place_of_birth="Innsbruck", gender="Female",
    ),
    TestPerson(
        "at-high", "AT", LOA_HIGH, "Stefan", "Pöschl", "1974-11-09", "bPKm5XvB2kYa7QhU1wTzF6jS3o",
        gender="Male",
        address=_address(("LocatorDesignator", "5"), ("Thoroughfare", "Mariahilfer Straße"),
                         ("PostName", "Wien"), ("PostCode", "1070"),
                         ("AdminunitFirstline", "AT")),
    ),
    # Poland: PESEL, with the ETSI prefix.
    TestPerson(
        "pl-low", "PL", LOA_LOW, "Łukasz", "Wiśniewski", "1993-09-17", "PNOPL-93091712345",
    ),
    TestPerson(
        "pl-substantial", "PL", LOA_SUBSTANTIAL, "Małgorzata", "Dąbrowska", "1966-12-02",
        "PNOPL-66120254321", birth_name="Żurawska", place_of_birth="Kraków", gender="Female",
    ),
    TestPerson(
        "pl-high", "PL", LOA_HIGH, "Zbigniew", "Wójcik", "1950-05-30", "PNOPL-50053011223",
        place_of_birth="Łódź", gender="Male",
        address=_address(("LocatorDesignator", "10/4"), ("Thoroughfare", "ul. Świętokrzyska"),
                         ("PostName", "Warszawa"), ("PostCode", "00-116"),
                         ("AdminunitFirstline", "PL")),
    ),
    # France: FranceConnect's eIDAS identifiers are opaque hexadecimal strings.
    TestPerson(
        "fr-low", "FR", LOA_LOW, "Aurélie", "Durand", "1988-01-26",
        "3e1d5c7b9a0f2e4d6c8b0a1f3e5d7c9b",
    ),
    TestPerson(
        "fr-substantial", "FR", LOA_SUBSTANTIAL, "Loïc", "Lemaître", "1979-08-08",
        "a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0", place_of_birth="Besançon", gender="Male",
    ),
    TestPerson(
        "fr-high", "FR", LOA_HIGH, "Cécile", "Gérard", "1960-04-03",
        "5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c", birth_name="Bézier", gender="Female",
        address=_address(("LocatorDesignator", "9"), ("Thoroughfare", "Rue de Rivoli"),
                         ("PostName", "Paris"), ("PostCode", "75004"),
                         ("AdminunitFirstline", "FR")),
    ),
)

#: Every test person, by id (`<country>-<loa>`, lower case).
PERSONS: Final[dict[str, TestPerson]] = {person.id: person for person in _PERSONS}
#: The member states the simulator has persons for, in alphabetical order.
COUNTRIES: Final = tuple(sorted({person.country for person in _PERSONS}))


def persons_for(country: str, minimum_loa: str) -> list[TestPerson]:
    """The persons of `country` whose eID reaches at least `minimum_loa`, lowest level first."""
    floor = loa_rank(minimum_loa)
    found = [p for p in _PERSONS if p.country == country and loa_rank(p.loa) >= floor]
    return sorted(found, key=lambda p: loa_rank(p.loa))
