"""The ``send_email`` handler: build a plain-text message and send it over SMTP."""

from __future__ import annotations

import logging
import smtplib
import ssl
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from pydantic import SecretStr

from bananas_core import JobContext, PermanentError
from bananas_email.addresses import parse_address
from bananas_email.payload import EmailPayload, parse_payload
from bananas_email.settings import SmtpSettings, load_smtp_settings

logger = logging.getLogger(__name__)


def send_email(
    payload: EmailPayload | dict[str, Any], ctx: JobContext | None = None
) -> dict[str, Any]:
    """Send one plain-text email over SMTP and return its Message-ID and recipients.

    ``payload`` is the EmailPayload that the worker builds from the stored payload, or a
    dict, which is validated here. The SMTP_* settings are read on every call. The result is
    ``{"message_id": str, "accepted": [address, ...], "refused": {address: "code text"}}``.
    ``refused`` lists recipients that the server rejected while it accepted others. Such a
    message is not retried, because a retry would send it to the accepted recipients again.

    Raises PermanentError for an invalid payload, invalid settings, or an SMTP reply with a
    5xx code. Other errors, such as a refused connection, a timeout or a 4xx reply, are
    raised unchanged so that the worker retries the job.
    """
    email = payload if isinstance(payload, EmailPayload) else parse_payload(payload)
    settings = load_smtp_settings()
    sender = email.sender or parse_address(settings.SMTP_FROM)
    message = build_message(email, sender)
    recipients = email.recipients

    refused = _deliver(message, sender.addr_spec, recipients, settings)

    accepted = [address for address in recipients if address not in refused]
    refused_replies = {address: _reply_text(*reply) for address, reply in refused.items()}
    job_logger = ctx.logger if ctx is not None else logger
    job_id = ctx.job_id if ctx is not None else "-"
    job_logger.info(
        "Sent email %s to %d recipients via %s:%d (job %s)",
        message["Message-ID"],
        len(accepted),
        settings.SMTP_HOST,
        settings.SMTP_PORT,
        job_id,
    )
    if refused_replies:
        job_logger.warning(
            "SMTP server refused %d of %d recipients of email %s (job %s): %s",
            len(refused_replies),
            len(recipients),
            message["Message-ID"],
            job_id,
            refused_replies,
        )
    return {"message_id": message["Message-ID"], "accepted": accepted, "refused": refused_replies}


def build_message(email: EmailPayload, sender: Address) -> EmailMessage:
    """Build the message for a validated payload, with Date and Message-ID set."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to
    if email.cc:
        message["Cc"] = email.cc
    if email.reply_to:
        message["Reply-To"] = email.reply_to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    # Passing the domain avoids make_msgid's default, socket.getfqdn(), which can block
    # on a DNS lookup.
    message["Message-ID"] = make_msgid(domain=_ascii_domain(sender.domain))
    message.set_content(email.body)
    return message


def _deliver(
    message: EmailMessage, sender: str, recipients: list[str], settings: SmtpSettings
) -> dict[str, tuple[int, bytes]]:
    """Send ``message`` and return the refused recipients with the server's replies."""
    server = f"{settings.SMTP_HOST}:{settings.SMTP_PORT}"
    context = ssl.create_default_context()
    try:
        with _connect(settings, context) as smtp:
            if settings.SMTP_STARTTLS:
                _start_tls(smtp, context, server)
            if settings.SMTP_USERNAME is not None and settings.SMTP_PASSWORD is not None:
                _log_in(smtp, settings.SMTP_USERNAME, settings.SMTP_PASSWORD, server)
            return smtp.send_message(message, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as error:
        replies = "; ".join(
            f"{address}: {_reply_text(*reply)}" for address, reply in error.recipients.items()
        )
        # A retry can only help when some refusal was temporary (4xx). No recipient has the
        # message yet, so a retry sends no duplicates.
        if all(_is_permanent(code) for code, _ in error.recipients.values()):
            raise PermanentError(
                f"SMTP server {server} refused every recipient: {replies}. "
                "Check the addresses in to and cc"
            ) from error
        raise
    except smtplib.SMTPSenderRefused as error:
        if _is_permanent(error.smtp_code):
            raise PermanentError(
                f"SMTP server {server} refused the sender {sender}: "
                f"{_reply_text(error.smtp_code, error.smtp_error)}"
            ) from error
        raise
    except smtplib.SMTPResponseException as error:
        # Also covers SMTPConnectError, SMTPHeloError and SMTPDataError, for example a
        # 554 greeting or a 552 reply to a message over the server's size limit.
        if _is_permanent(error.smtp_code):
            raise PermanentError(
                f"SMTP server {server} rejected the email: "
                f"{_reply_text(error.smtp_code, error.smtp_error)}"
            ) from error
        raise
    except smtplib.SMTPNotSupportedError as error:
        # Raised when the server lacks SMTPUTF8 for a non-ASCII address.
        raise PermanentError(f"SMTP server {server} cannot send this email: {error}") from error


def _connect(settings: SmtpSettings, context: ssl.SSLContext) -> smtplib.SMTP:
    if settings.SMTP_SSL:
        return smtplib.SMTP_SSL(
            settings.SMTP_HOST, settings.SMTP_PORT, timeout=settings.SMTP_TIMEOUT, context=context
        )
    return smtplib.SMTP(settings.SMTP_HOST, settings.SMTP_PORT, timeout=settings.SMTP_TIMEOUT)


def _start_tls(smtp: smtplib.SMTP, context: ssl.SSLContext, server: str) -> None:
    try:
        smtp.starttls(context=context)
    except smtplib.SMTPNotSupportedError as error:
        raise PermanentError(
            f"SMTP server {server} does not support STARTTLS: set SMTP_STARTTLS=false, "
            "or SMTP_SSL=true if the port expects TLS from the start"
        ) from error


def _log_in(smtp: smtplib.SMTP, username: str, password: SecretStr, server: str) -> None:
    try:
        smtp.login(username, password.get_secret_value())
    except smtplib.SMTPAuthenticationError as error:
        if _is_permanent(error.smtp_code):
            raise PermanentError(
                f"SMTP server {server} rejected the login of SMTP_USERNAME={username!r}: "
                f"{_reply_text(error.smtp_code, error.smtp_error)}. "
                "Check SMTP_USERNAME and SMTP_PASSWORD"
            ) from error
        raise
    except smtplib.SMTPNotSupportedError as error:
        raise PermanentError(
            f"SMTP server {server} does not offer AUTH on this connection: "
            "unset SMTP_USERNAME and SMTP_PASSWORD, or set SMTP_STARTTLS=true if the server "
            "offers AUTH only after STARTTLS"
        ) from error


def _is_permanent(code: int) -> bool:
    return 500 <= code <= 599


def _reply_text(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {text}".strip()


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "localhost"
