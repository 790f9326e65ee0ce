"""send_email against a real SMTP server on 127.0.0.1, started with aiosmtpd."""

from __future__ import annotations

import email.policy
import logging
import smtplib
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.parser import BytesParser

import bananas_email.handler
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from bananas_email import parse_payload, send_email

from bananas_core import Job, JobContext, JobStatus, PermanentError
from bananas_core.testing import MemoryQueue

VALID_LOGIN = ("mailer", "s3cret-pass")

# aiosmtpd warns when a server requires AUTH without TLS. The login tests need exactly that
# server, on 127.0.0.1 only, and the warnings filter turns the warning into an error.
allow_auth_without_tls = pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS:UserWarning"
)

SMTP_VARIABLES = (
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "SMTP_STARTTLS",
    "SMTP_SSL",
    "SMTP_FROM",
    "SMTP_TIMEOUT",
)


@dataclass
class ReceivedEmail:
    """One message as the server received it: envelope and parsed content."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that stores each message and refuses chosen recipients."""

    received: list[ReceivedEmail] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # address -> SMTP reply to RCPT
    data_reply: str | None = None  # a reply to DATA that rejects the message, if set

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list
    ) -> str:
        reply = self.refused.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        parser = BytesParser(policy=email.policy.default)
        self.received.append(
            ReceivedEmail(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=parser.parsebytes(envelope.original_content),  # type: ignore[arg-type]
            )
        )
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """A running test SMTP server and the handler that records what it receives."""

    port: int
    handler: RecordingHandler
    logins: list[tuple[str, str]] = field(default_factory=list)  # (username, password) tried


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def clean_smtp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove SMTP_* variables of the calling shell, so every test starts from the defaults."""
    for name in SMTP_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@contextmanager
def running_server(monkeypatch: pytest.MonkeyPatch, **smtp_options: object) -> Iterator[SmtpServer]:
    """Run a recording SMTP server on a free port and point SMTP_HOST and SMTP_PORT at it.

    ``smtp_options`` go to aiosmtpd's SMTP class, for example an authenticator.
    """
    server = SmtpServer(port=free_port(), handler=RecordingHandler())
    controller = Controller(server.handler, hostname="127.0.0.1", port=server.port, **smtp_options)
    controller.start()
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(server.port))
    monkeypatch.setenv("SMTP_TIMEOUT", "5")
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """Start an SMTP server without authentication."""
    with running_server(monkeypatch) as server:
        yield server


@pytest.fixture
def smtp_server_with_login(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """Start an SMTP server that requires the login ``mailer`` / ``s3cret-pass``.

    It accepts AUTH without TLS, which only a test server on 127.0.0.1 should do.
    """
    logins: list[tuple[str, str]] = []

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = auth_data.login.decode()
        password = auth_data.password.decode()
        logins.append((username, password))
        return AuthResult(success=(username, password) == VALID_LOGIN, handled=False)

    with running_server(
        monkeypatch, authenticator=authenticate, auth_required=True, auth_require_tls=False
    ) as server:
        server.logins = logins
        yield server


def make_context(job_id: str = "job-42") -> JobContext:
    job = Job(id=job_id, name="send_email", created_at=datetime.now(timezone.utc), attempts=1)
    return JobContext(job=job, logger=logging.getLogger("bananas.job.send_email"))


def test_send_email_delivers_headers_and_body(smtp_server: SmtpServer) -> None:
    payload = {
        "to": ["Ada Lovelace <ada@example.com>", "grace@example.com"],
        "cc": "Charles <charles@example.com>",
        "reply_to": "support@example.com",
        "subject": "Monthly report",
        "body": "The report is ready.\nSee you soon.\n",
    }

    result = send_email(payload)

    assert len(smtp_server.handler.received) == 1
    received = smtp_server.handler.received[0]
    assert received.mail_from == "bananas@localhost"
    assert received.rcpt_tos == ["ada@example.com", "grace@example.com", "charles@example.com"]
    message = received.message
    assert message["From"] == "bananas@localhost"
    assert message["To"] == "Ada Lovelace <ada@example.com>, grace@example.com"
    assert message["Cc"] == "Charles <charles@example.com>"
    assert message["Reply-To"] == "support@example.com"
    assert message["Subject"] == "Monthly report"
    assert message["Date"] is not None
    assert message["Message-ID"] == result["message_id"]
    # SMTP carries lines ending in CRLF, and the parser keeps them.
    assert message.get_content().replace("\r\n", "\n") == "The report is ready.\nSee you soon.\n"
    assert result["accepted"] == ["ada@example.com", "grace@example.com", "charles@example.com"]
    assert result["refused"] == {}


def test_send_email_from_overrides_smtp_from(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_FROM", "Bananas <noreply@example.org>")
    payload = {"to": "ada@example.com", "subject": "Hi", "body": "x", "from": "reports@example.com"}

    send_email(payload)

    received = smtp_server.handler.received[0]
    assert received.mail_from == "reports@example.com"
    assert received.message["From"] == "reports@example.com"


def test_send_email_uses_smtp_from(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_FROM", "Bananas <noreply@example.org>")

    result = send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    received = smtp_server.handler.received[0]
    assert received.mail_from == "noreply@example.org"
    assert received.message["From"] == "Bananas <noreply@example.org>"
    assert result["message_id"].endswith("@example.org>")


def test_send_email_non_ascii_text(smtp_server: SmtpServer) -> None:
    payload = {
        "to": "Zoë Ångström <zoe@example.com>",
        "subject": "Café menu: crème brûlée",
        "body": "Grüße aus Köln ☕\n",
    }

    send_email(payload)

    message = smtp_server.handler.received[0].message
    assert message["Subject"] == "Café menu: crème brûlée"
    assert message["To"] == "Zoë Ångström <zoe@example.com>"
    assert message.get_content().replace("\r\n", "\n") == "Grüße aus Köln ☕\n"


def test_send_email_deduplicates_recipients(smtp_server: SmtpServer) -> None:
    payload = {
        "to": ["ada@example.com", "Ada <ada@example.com>"],
        "cc": "ada@example.com",
        "subject": "Hi",
        "body": "x",
    }

    result = send_email(payload)

    assert smtp_server.handler.received[0].rcpt_tos == ["ada@example.com"]
    assert result["accepted"] == ["ada@example.com"]


def test_send_email_logs_job_id(smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    result = send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"}, make_context())

    sent_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Sent email")]
    assert len(sent_lines) == 1
    assert "job job-42" in sent_lines[0]
    assert result["message_id"] in sent_lines[0]


def test_send_email_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(free_port()))

    with pytest.raises(OSError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert not isinstance(raised.value, PermanentError)


def test_send_email_ssl_to_plain_server_is_retryable(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_SSL", "true")

    with pytest.raises(OSError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert not isinstance(raised.value, PermanentError)
    assert smtp_server.handler.received == []


def test_send_email_all_recipients_refused_is_permanent(smtp_server: SmtpServer) -> None:
    smtp_server.handler.refused["nobody@example.com"] = "550 5.1.1 No such user"

    with pytest.raises(PermanentError) as raised:
        send_email({"to": "nobody@example.com", "subject": "Hi", "body": "x"})

    assert "nobody@example.com: 550 5.1.1 No such user" in str(raised.value)
    assert smtp_server.handler.received == []


def test_send_email_temporary_refusal_is_retryable(smtp_server: SmtpServer) -> None:
    smtp_server.handler.refused["busy@example.com"] = "450 4.2.1 Mailbox busy"
    smtp_server.handler.refused["nobody@example.com"] = "550 5.1.1 No such user"

    with pytest.raises(smtplib.SMTPRecipientsRefused) as raised:
        send_email({"to": ["busy@example.com", "nobody@example.com"], "subject": "Hi", "body": "x"})

    assert not isinstance(raised.value, PermanentError)
    assert set(raised.value.recipients) == {"busy@example.com", "nobody@example.com"}


def test_send_email_partial_refusal_returns_refused(
    smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_server.handler.refused["nobody@example.com"] = "550 5.1.1 No such user"
    payload = {"to": ["ada@example.com", "nobody@example.com"], "subject": "Hi", "body": "x"}

    result = send_email(payload, make_context("job-7"))

    assert smtp_server.handler.received[0].rcpt_tos == ["ada@example.com"]
    assert result["accepted"] == ["ada@example.com"]
    assert result["refused"] == {"nobody@example.com": "550 5.1.1 No such user"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody@example.com" in warnings[0]
    assert "job job-7" in warnings[0]


def test_send_email_rejected_data_is_permanent(smtp_server: SmtpServer) -> None:
    smtp_server.handler.data_reply = "552 5.3.4 Message too big"

    with pytest.raises(PermanentError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert "552 5.3.4 Message too big" in str(raised.value)


@allow_auth_without_tls
def test_send_email_logs_in_when_credentials_set(
    smtp_server_with_login: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    username, password = VALID_LOGIN
    monkeypatch.setenv("SMTP_USERNAME", username)
    monkeypatch.setenv("SMTP_PASSWORD", password)

    send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"}, make_context())

    assert smtp_server_with_login.logins == [VALID_LOGIN]
    assert len(smtp_server_with_login.handler.received) == 1
    assert password not in caplog.text


@allow_auth_without_tls
def test_send_email_wrong_password_is_permanent(
    smtp_server_with_login: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_USERNAME", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-password")

    with pytest.raises(PermanentError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert "SMTP_USERNAME='mailer'" in str(raised.value)
    assert "wrong-password" not in str(raised.value)
    assert smtp_server_with_login.handler.received == []


@allow_auth_without_tls
def test_send_email_without_login_when_required(smtp_server_with_login: SmtpServer) -> None:
    with pytest.raises(PermanentError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert "530" in str(raised.value)
    assert smtp_server_with_login.logins == []


def test_send_email_starttls_unsupported_is_permanent(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_STARTTLS", "true")

    with pytest.raises(PermanentError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert "SMTP_STARTTLS=false" in str(raised.value)
    assert smtp_server.handler.received == []


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT='smtp'"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT='70000'"),
        ({"SMTP_TIMEOUT": "0"}, "SMTP_TIMEOUT='0'"),
        ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS='maybe'"),
        ({"SMTP_FROM": "not an address"}, "SMTP_FROM='not an address'"),
        ({"SMTP_STARTTLS": "true", "SMTP_SSL": "true"}, "SMTP_STARTTLS and SMTP_SSL are both"),
        ({"SMTP_USERNAME": "mailer"}, "SMTP_PASSWORD is not"),
        ({"SMTP_PASSWORD": "hunter2-secret"}, "SMTP_USERNAME is not"),
    ],
)
def test_send_email_invalid_settings_are_permanent(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(PermanentError) as raised:
        send_email({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    assert named in str(raised.value)
    assert "hunter2-secret" not in str(raised.value)
    assert "hunter2-secret" not in str(raised.value.__cause__)


def test_send_email_reads_settings_per_call(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = {"to": "ada@example.com", "subject": "Hi", "body": "x"}
    send_email(payload)

    monkeypatch.setenv("SMTP_PORT", str(free_port()))

    with pytest.raises(OSError):
        send_email(payload)
    assert len(smtp_server.handler.received) == 1


def test_send_email_non_ascii_domain(smtp_server: SmtpServer) -> None:
    result = send_email({"to": "ada@exämple.org", "subject": "Hi", "body": "x"})

    assert result["accepted"] == ["ada@exämple.org"]
    assert smtp_server.handler.received[0].rcpt_tos == ["ada@exämple.org"]


def test_send_email_without_smtputf8_is_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        running_server(monkeypatch, enable_SMTPUTF8=False) as server,
        pytest.raises(PermanentError) as raised,
    ):
        send_email({"to": "ada@exämple.org", "subject": "Hi", "body": "x"})

    assert "SMTPUTF8" in str(raised.value)
    assert server.handler.received == []


@pytest.mark.anyio
async def test_queued_job_passes_model_to_handler(
    smtp_server: SmtpServer, bananas_queue: MemoryQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_on_dict(payload: object) -> None:
        raise AssertionError(f"send_email received a dict, not an EmailPayload: {payload!r}")

    # The handler parses only a dict, so this fails the job if the worker passes one.
    monkeypatch.setattr(bananas_email.handler, "parse_payload", fail_on_dict)
    payload = {
        "to": ["Zoë Ångström <zoe@example.com>", '"Lovelace, Ada" <ada@example.com>'],
        "subject": "Hi",
        "body": "x",
        "from": '"Reports \\"Q2\\"" <reports@example.org>',
    }

    job = await bananas_queue.enqueue("send_email", payload)
    await bananas_queue.run_all()
    done = await bananas_queue.get(job.id)

    assert job.payload == {
        "to": ['"Zoë Ångström" <zoe@example.com>', '"Lovelace, Ada" <ada@example.com>'],
        "subject": "Hi",
        "body": "x",
        "from": '"Reports \\"Q2\\"" <reports@example.org>',
    }
    assert done.status is JobStatus.completed, done.error
    message = smtp_server.handler.received[0].message
    assert [address.display_name for address in message["To"].addresses] == [
        "Zoë Ångström",
        "Lovelace, Ada",
    ]
    assert message["From"].addresses[0].display_name == 'Reports "Q2"'
    assert smtp_server.handler.received[0].mail_from == "reports@example.org"


def test_send_email_accepts_model(smtp_server: SmtpServer) -> None:
    email = parse_payload({"to": "ada@example.com", "subject": "Hi", "body": "x"})

    result = send_email(email)

    assert result["accepted"] == ["ada@example.com"]
    assert len(smtp_server.handler.received) == 1
