"""Mail senders: a real SMTP server on loopback (aiosmtpd), the outbox, templates, the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from babel.messages.pofile import read_po
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import REGISTRY

from gateway import clock
from gateway.app import create_app
from gateway.cli import main
from gateway.i18n import TRANSLATIONS_DIR
from gateway.mail import (
    SMTP_TIMEOUT_SECONDS,
    InvalidAddress,
    InvalidMessage,
    MailError,
    MailMessage,
    MailSender,
    OutboxMailSender,
    SmtpConfig,
    SmtpMailSender,
    TemplateNotFound,
    get_mail,
    make_sender,
    render_template,
    send_template,
    validate_email,
)
from gateway.settings import Settings, SettingsError

DUTCH = "Uw e-mailadres is gewijzigd. Geëerd, café, één, ĳs: dat klopt."


# --- a real SMTP server on loopback ---------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": envelope.original_content,
                "tls": session.ssl is not None,
                "authenticated": session.authenticated,
            }
        )
        return "250 OK"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"desk" and auth_data.password == b"p@ss w:rd"
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Pki:
    ca_file: Path
    server_context: ssl.SSLContext


def _make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1, as a private relay would have."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return Pki(ca_file=ca_file, server_context=context)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


@dataclasses.dataclass
class Server:
    port: int
    recorder: Recorder


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., Server]]:
    """Start an aiosmtpd server on a free loopback port; options go to aiosmtpd's SMTP."""
    controllers: list[Controller] = []

    def start(**kwargs: Any) -> Server:
        recorder = Recorder()
        if kwargs.pop("auth", False):
            kwargs["authenticator"] = recorder.authenticator
        port = free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return Server(port=port, recorder=recorder)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def mail_settings(tmp_path: Path) -> Settings:
    """Settings for tests that build senders but no app: mail needs no database, and skipping
    the shared `settings` fixture skips its per-test table clean-up on PostgreSQL."""
    instance = tmp_path / "mail-instance"
    instance.mkdir()
    return Settings.from_env(
        {"GATEWAY_INSTANCE_DIR": str(instance), "GATEWAY_SECRET_KEY": "mail-test-" + "x" * 40}
    )


def smtp_settings(settings: Settings, url: str, **env: str) -> Settings:
    return settings.with_overrides(mail_url=url, environ={**settings.environ, **env})


def sender_for(settings: Settings, url: str, **env: str) -> SmtpMailSender:
    sender = make_sender(smtp_settings(settings, url, **env))
    assert isinstance(sender, SmtpMailSender)
    return sender


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def message(**changes: Any) -> MailMessage:
    fields: dict[str, Any] = {
        "to": "burger@example.nl",
        "subject": "Wijziging van uw gegevens: café één",
        "text": DUTCH + "\n\nTweede alinea.\n",
        "kind": "test",
    }
    fields.update(changes)
    return MailMessage(**fields)


# --- SMTP delivery --------------------------------------------------------------------------


def test_smtp_starttls_delivers_a_well_formed_utf8_message(
    mail_settings: Settings, smtp_server: Callable[..., Server], pki: Pki
) -> None:
    server = smtp_server(tls_context=pki.server_context)
    sender = sender_for(
        mail_settings,
        f"smtp://127.0.0.1:{server.port}",
        GATEWAY_MAIL_STARTTLS="required",
        GATEWAY_MAIL_CA_FILE=str(pki.ca_file),
        GATEWAY_MAIL_FROM="noreply@gateway.example.nl",
    )
    at = dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.UTC)
    with clock.frozen(at):
        sender.send(message(html="<p>Geëerd</p>"))

    [got] = server.recorder.messages
    assert got["tls"] is True
    assert got["mail_from"] == "noreply@gateway.example.nl"
    assert got["rcpt_tos"] == ["burger@example.nl"]
    raw: bytes = got["data"]
    # SMTP line endings throughout, 7-bit clean (no relay needs 8BITMIME), short lines.
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert all(line.isascii() and len(line) <= 998 for line in lines)

    mime = parse(raw)
    assert mime["From"] == "noreply@gateway.example.nl"
    assert mime["To"] == "burger@example.nl"
    assert str(mime["Subject"]) == "Wijziging van uw gegevens: café één"
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n")[0]  # RFC 2047 encoded subject
    assert mime["Auto-Submitted"] == "auto-generated"
    assert mime["MIME-Version"] == "1.0"
    assert mime["Date"].datetime == at
    assert mime["Message-ID"].startswith("<") and mime["Message-ID"].endswith(
        "@gateway.example.nl>"
    )
    assert mime.get_content_type() == "multipart/alternative"
    text_part = mime.get_body(preferencelist=("plain",))
    html_part = mime.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content_charset() == "utf-8"
    # On the wire every line ends in CRLF, also inside the quoted-printable body.
    assert text_part.get_content() == (DUTCH + "\n\nTweede alinea.\n").replace("\n", "\r\n")
    assert html_part.get_content() == "<p>Geëerd</p>\r\n"


def test_each_message_gets_its_own_message_id(
    mail_settings: Settings, smtp_server: Callable[..., Server]
) -> None:
    server = smtp_server()
    sender = sender_for(mail_settings, f"smtp://127.0.0.1:{server.port}")
    sender.send(message())
    sender.send(message())
    ids = {parse(m["data"])["Message-ID"] for m in server.recorder.messages}
    assert len(ids) == 2


def test_opportunistic_starttls_sends_in_the_clear_when_not_offered(
    mail_settings: Settings, smtp_server: Callable[..., Server]
) -> None:
    server = smtp_server()
    sender = sender_for(
        mail_settings, f"smtp://127.0.0.1:{server.port}", GATEWAY_MAIL_STARTTLS="opportunistic"
    )
    sender.send(message())
    [got] = server.recorder.messages
    assert got["tls"] is False


def test_opportunistic_starttls_uses_tls_when_offered(
    mail_settings: Settings, smtp_server: Callable[..., Server], pki: Pki
) -> None:
    server = smtp_server(tls_context=pki.server_context)
    sender_for(
        mail_settings,
        f"smtp://127.0.0.1:{server.port}",
        GATEWAY_MAIL_CA_FILE=str(pki.ca_file),
    ).send(message())
    assert server.recorder.messages[0]["tls"] is True


def test_required_starttls_not_offered_is_an_error_and_nothing_is_sent(
    mail_settings: Settings, smtp_server: Callable[..., Server]
) -> None:
    server = smtp_server()
    sender = sender_for(
        mail_settings, f"smtp://127.0.0.1:{server.port}", GATEWAY_MAIL_STARTTLS="required"
    )
    with pytest.raises(MailError) as err:
        sender.send(message())
    assert "STARTTLS" in err.value.reason
    assert err.value.retryable
    assert server.recorder.messages == []


def test_untrusted_certificate_is_refused(
    mail_settings: Settings, smtp_server: Callable[..., Server], pki: Pki
) -> None:
    server = smtp_server(tls_context=pki.server_context)
    # No GATEWAY_MAIL_CA_FILE: the system trust store does not know the test CA.
    sender = sender_for(
        mail_settings, f"smtp://127.0.0.1:{server.port}", GATEWAY_MAIL_STARTTLS="required"
    )
    with pytest.raises(MailError) as err:
        sender.send(message())
    assert not err.value.retryable
    assert "certificate" in err.value.reason
    assert server.recorder.messages == []


def test_smtps_implicit_tls(
    mail_settings: Settings, smtp_server: Callable[..., Server], pki: Pki
) -> None:
    server = smtp_server(ssl_context=pki.server_context)
    sender = sender_for(
        mail_settings, f"smtps://127.0.0.1:{server.port}", GATEWAY_MAIL_CA_FILE=str(pki.ca_file)
    )
    assert sender.config.implicit_tls
    sender.send(message())
    assert parse(server.recorder.messages[0]["data"])["To"] == "burger@example.nl"


def test_server_down_is_a_retryable_error(mail_settings: Settings) -> None:
    sender = sender_for(mail_settings, f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(MailError) as err:
        sender.send(message())
    assert err.value.retryable
    assert "burger" not in str(err.value)


def test_silent_server_times_out_as_a_retryable_error(mail_settings: Settings) -> None:
    """A relay that accepts the connection and then says nothing must not hold a worker."""
    assert 0 < SMTP_TIMEOUT_SECONDS <= 30
    assert sender_for(mail_settings, "smtp://127.0.0.1:2525").config.timeout == SMTP_TIMEOUT_SECONDS
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sender = sender_for(mail_settings, f"smtp://127.0.0.1:{port}")
        quick = SmtpMailSender(dataclasses.replace(sender.config, timeout=0.3))
        errors: list[BaseException] = []

        def attempt() -> None:
            try:
                quick.send(message())
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(timeout=20)  # a liveness bound against a hang, not a timing assertion
        assert not worker.is_alive(), "send() did not give up on a silent relay"
    [error] = errors
    assert isinstance(error, MailError)
    assert error.retryable
    assert "timeout" in error.reason


def test_auth_over_starttls(
    mail_settings: Settings, smtp_server: Callable[..., Server], pki: Pki
) -> None:
    server = smtp_server(tls_context=pki.server_context, auth=True, auth_require_tls=True)
    # Credentials in the URL's user-info, percent-encoded (a space, an @, a colon).
    sender = sender_for(
        mail_settings,
        f"smtp://desk:p%40ss%20w%3Ard@127.0.0.1:{server.port}",
        GATEWAY_MAIL_STARTTLS="required",
        GATEWAY_MAIL_CA_FILE=str(pki.ca_file),
    )
    assert "w:rd" not in repr(sender)
    sender.send(message())
    [got] = server.recorder.messages
    assert got["authenticated"] and got["tls"]
    assert server.recorder.logins == [(b"desk", b"p@ss w:rd")]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_with_credentials_from_variables_and_a_wrong_password(
    mail_settings: Settings, smtp_server: Callable[..., Server]
) -> None:
    # aiosmtpd refuses AUTH without TLS unless told otherwise; the relay is on loopback.
    server = smtp_server(auth=True, auth_require_tls=False, auth_required=True)
    good = sender_for(
        mail_settings,
        f"smtp://127.0.0.1:{server.port}",
        GATEWAY_MAIL_USERNAME="desk",
        GATEWAY_MAIL_PASSWORD="p@ss w:rd",
    )
    good.send(message())
    bad = sender_for(
        mail_settings,
        f"smtp://127.0.0.1:{server.port}",
        GATEWAY_MAIL_USERNAME="desk",
        GATEWAY_MAIL_PASSWORD="guess",
    )
    with pytest.raises(MailError) as err:
        bad.send(message())
    assert not err.value.retryable
    assert "guess" not in str(err.value)
    assert len(server.recorder.messages) == 1


def test_credentials_never_go_over_plain_text_to_a_remote_relay(
    mail_settings: Settings, smtp_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = smtp_server(auth=True, auth_require_tls=False)
    sender = sender_for(
        mail_settings,
        f"smtp://desk:secret@127.0.0.1:{server.port}",
        GATEWAY_MAIL_STARTTLS="opportunistic",
    )
    # Pretend the relay is elsewhere on the network.
    monkeypatch.setattr(SmtpConfig, "loopback", property(lambda self: False))
    with pytest.raises(MailError) as err:
        sender.send(message())
    assert "credentials" in err.value.reason
    assert server.recorder.logins == [] and server.recorder.messages == []


def test_relay_refusing_the_recipient(
    mail_settings: Settings, smtp_server: Callable[..., Server]
) -> None:
    class Refuser(Recorder):
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            return "550 5.1.1 no such user" if address.startswith("gone") else "451 4.3.0 later"

    port = free_port()
    controller = Controller(Refuser(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = sender_for(mail_settings, f"smtp://127.0.0.1:{port}")
        with pytest.raises(MailError) as permanent:
            sender.send(message(to="gone@example.nl"))
        with pytest.raises(MailError) as temporary:
            sender.send(message(to="busy@example.nl"))
    finally:
        controller.stop()
    assert not permanent.value.retryable and "550" in permanent.value.reason
    assert temporary.value.retryable and "451" in temporary.value.reason
    assert "gone" not in str(permanent.value)


def test_internationalised_domain_goes_out_in_idna_form(
    mail_settings: Settings, smtp_server: Callable[..., Server]
) -> None:
    server = smtp_server()
    sender_for(mail_settings, f"smtp://127.0.0.1:{server.port}").send(
        message(to="jan@bücher.example")
    )
    [got] = server.recorder.messages
    assert got["rcpt_tos"] == ["jan@xn--bcher-kva.example"]
    assert parse(got["data"])["To"] == "jan@xn--bcher-kva.example"


# --- header injection and hostile messages --------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Hallo\r\nBcc: victim@example.org",
        "Hallo\nBcc: victim@example.org",
        "Hallo\rBcc: victim@example.org",
        "Hallo\u2028Bcc: victim@example.org",
        "Hallo\x85Bcc: victim@example.org",
        "Hallo\x0bBcc",
        "Hallo\x00",
        "Hallo\n",
        "",
        "   ",
        "x" * 201,
    ],
)
def test_bad_subjects_are_refused(subject: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        message(subject=subject)
    assert not err.value.retryable


@pytest.mark.parametrize(
    "to",
    [
        "burger@example.nl\r\nBcc: victim@example.org",
        "burger@example.nl\nBcc: victim@example.org",
        "burger@example.nl,victim@example.org",
        "burger@example.nl victim@example.org",
        "Burger <burger@example.nl>",
        "<burger@example.nl>",
        '"burger"@example.nl',
        "burger@[127.0.0.1]",
        "burger@localhost",
        "burger@printer.local",
        "burger@example",
        "@example.nl",
        "burger@",
        "bürger@example.nl",
        "a" * 65 + "@example.nl",
        "burger@" + "a" * 250 + ".nl",
        "",
    ],
)
def test_bad_recipients_are_refused(to: str) -> None:
    with pytest.raises(InvalidMessage):
        message(to=to)


def test_message_needs_text_and_a_metrics_kind() -> None:
    with pytest.raises(InvalidMessage):
        message(text="  \n")
    for kind in ("Phone Changed", "a{b}", "x" * 41, "", "ü"):
        with pytest.raises(InvalidMessage):
            message(kind=kind)


def test_repr_of_a_message_leaves_out_personal_data() -> None:
    shown = repr(message())
    assert "burger@example.nl" not in shown and "Geëerd" not in shown


def test_template_context_cannot_inject_headers(
    mail_settings: Settings,
    smtp_server: Callable[..., Server],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.mail import templates

    (tmp_path / "hello.en.txt").write_text("Subject: Hello {{ name }}\n\nHi {{ name }}.\n")
    monkeypatch.setattr(templates, "TEMPLATES_DIR", tmp_path)
    templates._environment.cache_clear()
    try:
        assert render_template("a@example.org", "hello", "en", name="Anna").subject == "Hello Anna"
        with pytest.raises(InvalidMessage):
            render_template("a@example.org", "hello", "en", name="x\r\nBcc: victim@example.org")
    finally:
        templates._environment.cache_clear()


# --- the outbox -----------------------------------------------------------------------------


def test_outbox_writes_json_lines_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "mail-outbox.jsonl"
    sender = OutboxMailSender(path)
    at = dt.datetime(2025, 3, 1, 12, 30, 5, 250000, tzinfo=dt.UTC)
    with clock.frozen(at):
        sender.send(message())
        sender.send(message(html="<p>één</p>", subject="Tweede"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert "één".encode() in raw  # readable UTF-8, not \u escapes
    first, second = (json.loads(line) for line in raw.decode().splitlines())
    assert first == {
        "to": "burger@example.nl",
        "subject": "Wijziging van uw gegevens: café één",
        "text": DUTCH + "\n\nTweede alinea.\n",
        "sent_at": "2025-03-01T12:30:05.250Z",
    }
    assert second["html"] == "<p>één</p>" and second["subject"] == "Tweede"


def test_outbox_tightens_the_mode_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "mail-outbox.jsonl"
    path.write_text("")
    path.chmod(0o644)
    OutboxMailSender(path).send(message())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_outbox_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "mail-outbox.jsonl"
    big = "é" * 40_000  # lines far larger than a pipe buffer

    def write(n: int) -> None:
        sender = OutboxMailSender(path)
        for i in range(10):
            sender.send(message(text=f"{n}-{i} {big}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 80
    assert sorted(r["text"].split(" ")[0] for r in records) == sorted(
        f"{n}-{i}" for n in range(8) for i in range(10)
    )


# --- the contract every implementation keeps ------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    sender: MailSender
    delivered: Callable[[], list[dict[str, str]]]
    broken: MailSender


@pytest.fixture(params=["smtp", "outbox"])
def case(
    request: pytest.FixtureRequest,
    mail_settings: Settings,
    smtp_server: Callable[..., Server],
    tmp_path: Path,
) -> Case:
    if request.param == "smtp":
        server = smtp_server()

        def from_server() -> list[dict[str, str]]:
            out = []
            for m in server.recorder.messages:
                mime = parse(m["data"])
                body = mime.get_body(preferencelist=("plain",))
                assert body is not None
                out.append(
                    {
                        "to": m["rcpt_tos"][0],
                        "subject": str(mime["Subject"]),
                        "text": body.get_content().replace("\r\n", "\n"),
                    }
                )
            return out

        return Case(
            name="smtp",
            sender=sender_for(mail_settings, f"smtp://127.0.0.1:{server.port}"),
            delivered=from_server,
            broken=sender_for(mail_settings, f"smtp://127.0.0.1:{free_port()}"),
        )
    path = tmp_path / "outbox.jsonl"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    def from_file() -> list[dict[str, str]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    return Case(
        name="outbox",
        sender=OutboxMailSender(path),
        delivered=from_file,
        broken=OutboxMailSender(blocker / "outbox.jsonl"),
    )


def sent_count(sender: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "mail_messages_total", {"kind": "contract", "sender": sender, "outcome": outcome}
    )
    return value or 0.0


def test_contract_delivers_exactly_what_was_sent(case: Case) -> None:
    assert isinstance(case.sender, MailSender)
    before = sent_count(case.name, "sent")
    case.sender.send(
        message(to="a@example.org", subject="Één", text="Regel één\nRegel twee\n", kind="contract")
    )
    assert sent_count(case.name, "sent") == before + 1
    [got] = case.delivered()
    assert got["to"] == "a@example.org"
    assert got["subject"] == "Één"
    assert got["text"] == "Regel één\nRegel twee\n"


def test_contract_unavailable_destination_is_a_retryable_mail_error(case: Case) -> None:
    before = sent_count(case.name, "retryable")
    with pytest.raises(MailError) as err:
        case.broken.send(message(kind="contract"))
    assert sent_count(case.name, "retryable") == before + 1
    assert err.value.retryable
    assert "burger" not in str(err.value)
    assert case.delivered() == []


# --- settings -------------------------------------------------------------------------------


def test_outbox_is_the_default(mail_settings: Settings) -> None:
    sender = make_sender(mail_settings)
    assert isinstance(sender, OutboxMailSender)
    assert sender.path == mail_settings.mail_outbox


def test_defaults_depend_on_the_environment(mail_settings: Settings) -> None:
    dev = SmtpConfig.from_settings(smtp_settings(mail_settings, "smtp://relay.example.nl"))
    assert (dev.port, dev.starttls.value, dev.implicit_tls) == (25, "opportunistic", False)
    assert dev.sender == "noreply@localhost"  # the test issuer is an IP address
    prod = SmtpConfig.from_settings(
        smtp_settings(mail_settings, "smtps://relay.example.nl").with_overrides(
            env="production", issuer="https://inloggen.example.nl"
        )
    )
    assert (prod.port, prod.implicit_tls) == (465, True)
    assert prod.sender == "noreply@inloggen.example.nl"
    prod_starttls = SmtpConfig.from_settings(
        smtp_settings(mail_settings, "smtp://relay.example.nl:587").with_overrides(
            env="production", issuer="https://inloggen.example.nl"
        )
    )
    assert (prod_starttls.port, prod_starttls.starttls.value) == (587, "required")


@pytest.mark.parametrize(
    ("url", "env", "production", "variable"),
    [
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_STARTTLS": "maybe"},
            False,
            "GATEWAY_MAIL_STARTTLS",
        ),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_STARTTLS": "off"},
            True,
            "GATEWAY_MAIL_STARTTLS",
        ),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_STARTTLS": "opportunistic"},
            True,
            "GATEWAY_MAIL_STARTTLS",
        ),
        ("smtp://relay.example.nl:99999", {}, False, "GATEWAY_MAIL_URL"),
        ("smtp://relay.example.nl:port", {}, False, "GATEWAY_MAIL_URL"),
        ("smtp://relay.example.nl/path", {}, False, "GATEWAY_MAIL_URL"),
        ("smtp://relay.example.nl?x=1", {}, False, "GATEWAY_MAIL_URL"),
        ("http://relay.example.nl", {}, False, "GATEWAY_MAIL_URL"),
        ("smtp://", {}, False, "GATEWAY_MAIL_URL"),
        (
            "smtp://u:p@relay.example.nl",
            {"GATEWAY_MAIL_USERNAME": "u"},
            False,
            "GATEWAY_MAIL_USERNAME",
        ),
        ("smtp://relay.example.nl", {"GATEWAY_MAIL_USERNAME": "u"}, False, "GATEWAY_MAIL_PASSWORD"),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_USERNAME": "u\r\nRSET", "GATEWAY_MAIL_PASSWORD": "p"},
            False,
            "GATEWAY_MAIL_USERNAME",
        ),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_USERNAME": "u", "GATEWAY_MAIL_PASSWORD": "wörd"},
            False,
            "GATEWAY_MAIL_PASSWORD",
        ),
        ("smtp://u:w%C3%B6rd@relay.example.nl", {}, False, "GATEWAY_MAIL_PASSWORD"),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_FROM": "not an address"},
            False,
            "GATEWAY_MAIL_FROM",
        ),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_FROM": "a@b.nl\r\nBcc: x@y.nl"},
            False,
            "GATEWAY_MAIL_FROM",
        ),
        (
            "smtp://relay.example.nl",
            {"GATEWAY_MAIL_CA_FILE": "/nonexistent/ca.pem"},
            False,
            "GATEWAY_MAIL_CA_FILE",
        ),
    ],
)
def test_malformed_mail_settings_name_the_variable(
    mail_settings: Settings, url: str, env: dict[str, str], production: bool, variable: str
) -> None:
    s = smtp_settings(mail_settings, url, **env)
    if production:
        s = s.with_overrides(env="production", issuer="https://inloggen.example.nl")
    with pytest.raises(SettingsError) as err:
        make_sender(s)
    assert str(err.value).startswith(variable + ":")
    assert "\n" not in str(err.value)


def test_production_accepts_a_plain_relay_on_loopback(mail_settings: Settings) -> None:
    plain = smtp_settings(mail_settings, "smtp://127.0.0.1:25", GATEWAY_MAIL_STARTTLS="off")
    config = SmtpConfig.from_settings(
        plain.with_overrides(env="production", issuer="https://inloggen.example.nl")
    )
    assert config.starttls.value == "off"


def test_bad_mail_setting_stops_start_up(mail_settings: Settings) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_MAIL_STARTTLS:"):
        create_app(smtp_settings(mail_settings, "smtp://127.0.0.1:25", GATEWAY_MAIL_STARTTLS="yes"))


def test_settings_from_env_reject_a_malformed_mail_url(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_MAIL_URL:"):
        Settings.from_env({"GATEWAY_INSTANCE_DIR": str(tmp_path), "GATEWAY_MAIL_URL": "smtp://:25"})


# --- validate_email -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("burger@example.nl", "burger@example.nl"),
        ("  Jan.Jansen+gw@Example.NL \n", "Jan.Jansen+gw@example.nl"),
        ("jan@BÜCHER.example", "jan@bücher.example"),
        ("o'brien@example.ie", "o'brien@example.ie"),
    ],
)
def test_validate_email_accepts_and_normalises(raw: str, expected: str) -> None:
    assert validate_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "english"),
    [
        ("", "Enter your e-mail address."),
        ("   ", "Enter your e-mail address."),
        (None, "Enter your e-mail address."),
        (["a@example.nl"], "Enter your e-mail address."),
        ("a" * 600 + "@example.nl", "This e-mail address is too long."),
        ("josé@example.nl", "We cannot send mail to an address with accents"),
        ("burger", "Enter a valid e-mail address"),
        ("burger@example", "Enter a valid e-mail address"),
        ("burger@@example.nl", "Enter a valid e-mail address"),
        ("burger@exa mple.nl", "Enter a valid e-mail address"),
        ("burger@example.nl\r\nBcc: x@example.org", "Enter a valid e-mail address"),
        ("Burger <burger@example.nl>", "Enter a valid e-mail address"),
        ("burger@[10.0.0.1]", "Enter a valid e-mail address"),
        ("burger@localhost", "Enter a valid e-mail address"),
        ("burger@example.invalid", "Enter a valid e-mail address"),
        (".burger@example.nl", "Enter a valid e-mail address"),
        ("bur..ger@example.nl", "Enter a valid e-mail address"),
        ("burger@-example.nl", "Enter a valid e-mail address"),
        ("burger@example.nl\x00", "Enter a valid e-mail address"),
    ],
)
def test_validate_email_refuses_with_a_translatable_message(raw: Any, english: str) -> None:
    with pytest.raises(InvalidAddress) as err:
        validate_email(raw)
    assert str(err.value.message).startswith(english)


def test_address_messages_have_dutch_translations() -> None:
    with (TRANSLATIONS_DIR / "nl" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    ids = set()
    for raw in ("", "a" * 600 + "@x.nl", "josé@example.nl", "burger"):
        with pytest.raises(InvalidAddress) as err:
            validate_email(raw)
        ids.add(str(err.value.message))  # outside a request: the English message id
    assert len(ids) == 4
    for msgid in ids:
        entry = catalog.get(msgid)
        assert entry is not None and entry.string and entry.string != msgid, msgid


# --- templates and the app ------------------------------------------------------------------


@pytest.mark.parametrize(("language", "subject"), [("nl", "Testbericht"), ("en", "Test message")])
def test_test_template_in_both_languages(language: str, subject: str) -> None:
    msg = render_template("burger@example.nl", "test", language)
    assert msg.subject.startswith(subject)
    assert msg.kind == "test"
    assert not msg.text.startswith("\n") and "Subject:" not in msg.text


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("test", "de"),
        ("../test", "nl"),
        ("test.nl.txt", "nl"),
        ("nonexistent", "nl"),
        ("Test", "nl"),
        ("test", "../nl"),
    ],
)
def test_unknown_templates_are_refused(name: str, language: str) -> None:
    with pytest.raises(TemplateNotFound):
        render_template("burger@example.nl", name, language)


def test_send_template_through_the_app_outbox(app: Any) -> None:
    with app.app_context():
        assert isinstance(get_mail(), OutboxMailSender)
        send_template("burger@example.nl", "test", "en")
    path: Path = get_mail(app).path  # type: ignore[attr-defined]
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["to"] == "burger@example.nl"
    assert record["subject"] == "Test message from the login gateway"


# --- the command line -----------------------------------------------------------------------


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_INSTANCE_DIR": str(settings.instance_dir),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_SECRET_KEY": settings.secret_key.decode(),
        "GATEWAY_REDIS_URL": settings.redis_url or "",
        "GATEWAY_REDIS_PREFIX": settings.redis_prefix,
        "GATEWAY_MAIL_URL": "outbox",
        "GATEWAY_MAIL_OUTBOX": str(settings.mail_outbox),
        **extra,
    }


def test_cli_mail_test_over_smtp(settings: Settings, smtp_server: Callable[..., Server]) -> None:
    server = smtp_server()
    result = CliRunner().invoke(
        main,
        ["mail", "test", "--to", "beheer@example.nl", "--lang", "en"],
        env=cli_env(settings, GATEWAY_MAIL_URL=f"smtp://127.0.0.1:{server.port}"),
    )
    assert result.exit_code == 0, result.output
    [got] = server.recorder.messages
    assert got["rcpt_tos"] == ["beheer@example.nl"]
    assert str(parse(got["data"])["Subject"]) == "Test message from the login gateway"


def test_cli_mail_test_to_the_outbox_in_dutch(settings: Settings) -> None:
    result = CliRunner().invoke(
        main, ["mail", "test", "--to", "beheer@example.nl"], env=cli_env(settings)
    )
    assert result.exit_code == 0, result.output
    [record] = [json.loads(x) for x in settings.mail_outbox.read_text().splitlines()]
    assert record["subject"] == "Testbericht van de inloggateway"


@pytest.mark.parametrize(
    ("args", "extra", "reason"),
    [
        (["--to", "not-an-address"], {}, "gateway: --to: Enter a valid e-mail address"),
        (["--to", "a@example.nl\r\nBcc: b@example.nl"], {}, "gateway: --to:"),
        (
            ["--to", "a@example.nl"],
            {"GATEWAY_MAIL_STARTTLS": "sometimes", "GATEWAY_MAIL_URL": "smtp://127.0.0.1:25"},
            "gateway: GATEWAY_MAIL_STARTTLS:",
        ),
        (
            ["--to", "a@example.nl"],
            {"GATEWAY_MAIL_URL": "smtp://127.0.0.1:CLOSED"},
            "gateway: mail not sent: cannot reach the mail relay",
        ),
    ],
)
def test_cli_mail_test_failures_are_one_line(
    settings: Settings, args: list[str], extra: dict[str, str], reason: str
) -> None:
    if extra.get("GATEWAY_MAIL_URL", "").endswith("CLOSED"):
        extra = {**extra, "GATEWAY_MAIL_URL": f"smtp://127.0.0.1:{free_port()}"}
    result = CliRunner().invoke(main, ["mail", "test", *args], env=cli_env(settings, **extra))
    assert result.exit_code == 1
    assert result.output.startswith(reason), result.output
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output
