"""bananas-email: a bananas plugin whose ``send_email`` handler sends plain-text email over SMTP."""

from bananas_email.handler import build_message, send_email
from bananas_email.payload import EmailPayload, parse_payload
from bananas_email.settings import SmtpSettings, load_smtp_settings

__all__ = [
    "EmailPayload",
    "SmtpSettings",
    "build_message",
    "load_smtp_settings",
    "parse_payload",
    "send_email",
]
