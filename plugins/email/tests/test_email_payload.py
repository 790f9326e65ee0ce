"""Validation of the send_email payload: each invalid payload fails for good, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from bananas_email import EmailPayload, parse_payload, send_email
from bananas_email.addresses import format_address, parse_address
from bananas_email.payload import MAX_RECIPIENTS

from bananas_core import PermanentError

VALID = {"to": "ada@example.com", "subject": "Hi", "body": "Hello"}


def with_changes(**changes: Any) -> dict[str, Any]:
    """Return VALID with ``changes`` applied; a value of None removes the field."""
    payload = {**VALID, **changes}
    return {key: value for key, value in payload.items() if value is not None}


def test_payload_single_address_becomes_list() -> None:
    email = parse_payload(VALID)

    assert [address.addr_spec for address in email.to] == ["ada@example.com"]
    assert email.cc == []
    assert email.reply_to == []
    assert email.sender is None


def test_payload_accepts_display_names() -> None:
    email = parse_payload(
        with_changes(
            to=['"Lovelace, Ada" <ada@example.com>'], **{"from": "Reports <r@example.org>"}
        )
    )

    assert str(email.to[0]) == '"Lovelace, Ada" <ada@example.com>'
    assert email.sender is not None
    assert email.sender.addr_spec == "r@example.org"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (with_changes(to=None), "missing field 'to': give one address"),
        (with_changes(subject=None), "missing field 'subject'"),
        (with_changes(body=None), "missing field 'body'"),
        (with_changes(to=[]), "invalid field 'to'"),
        (with_changes(to=42), "invalid field 'to'"),
        (with_changes(to="not-an-address"), "invalid field 'to[0]': 'not-an-address' is not"),
        (with_changes(to=["ada@example.com", "x@"]), "invalid field 'to[1]'"),
        (with_changes(to="ada@\u00a0.x"), "invalid field 'to[0]': 'ada@\\xa0.x' is not"),
        (with_changes(to="ada@example..com"), "invalid field 'to[0]'"),
        (with_changes(to="ada@exa mple.com"), "'ada@exa mple.com' is not an email address that can be sent"),
        (with_changes(to="ada@exa\u00a0mple.com"), "is not an email address that can be sent"),
        (with_changes(to='"a..b"@example.com'), "is not an email address that can be sent"),
        (with_changes(to='".ada"@example.com'), "is not an email address that can be sent"),
        (with_changes(to="a@example.com, b@example.com"), "its own list item"),
        (with_changes(to="ada@example.com\r\nBcc: eve@example.com"), "line break"),
        (with_changes(cc=["bad"]), "invalid field 'cc[0]'"),
        (with_changes(reply_to=5), "invalid field 'reply_to'"),
        (with_changes(**{"from": "nobody"}), "invalid field 'from'"),
        (with_changes(subject=""), "invalid field 'subject'"),
        (with_changes(subject="   "), "invalid field 'subject': contains only whitespace"),
        (with_changes(subject="Hi\nBcc: eve@example.com"), "invalid field 'subject': contains a"),
        (with_changes(subject="Hi\u2028Bcc: eve@example.com"), "invalid field 'subject': contains a"),
        (with_changes(subject="Hi\x85there"), "invalid field 'subject': contains a"),
        (with_changes(subject="Hi\x7fthere"), "invalid field 'subject': contains a"),
        (with_changes(to="Ada\u2029 <ada@example.com>"), "line break"),
        (with_changes(body=["line"]), "invalid field 'body'"),
        (with_changes(bcc="eve@example.com"), "unknown field 'bcc': remove it"),
    ],
)
def test_payload_invalid_field_is_named(payload: dict[str, Any], expected: str) -> None:
    with pytest.raises(PermanentError) as raised:
        parse_payload(payload)

    assert expected in str(raised.value)


def test_payload_error_says_how_to_fix() -> None:
    with pytest.raises(PermanentError) as raised:
        parse_payload(with_changes(to="nobody"))

    assert "Fix: give one address such as 'ada@example.com' or a list of them" in str(raised.value)


def test_payload_lists_every_problem() -> None:
    with pytest.raises(PermanentError) as raised:
        parse_payload({"to": "bad", "body": 1})

    message = str(raised.value)
    assert "invalid field 'to[0]'" in message
    assert "missing field 'subject'" in message
    assert "invalid field 'body'" in message


def test_payload_too_many_recipients() -> None:
    to = [f"user{number}@example.com" for number in range(MAX_RECIPIENTS)]

    with pytest.raises(PermanentError) as raised:
        parse_payload(with_changes(to=to, cc="one-more@example.com"))

    assert f"{MAX_RECIPIENTS + 1} different recipients" in str(raised.value)


def test_payload_not_an_object() -> None:
    with pytest.raises(PermanentError) as raised:
        parse_payload(["ada@example.com"])

    assert "expected a JSON object" in str(raised.value)


def test_send_email_rejects_payload_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The payload check comes first. If the handler connected first, it would raise
    # OSError or an SMTP error here, because nothing serves SMTP on port 1.
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", "1")

    with pytest.raises(PermanentError) as raised:
        send_email(with_changes(subject=None))

    assert "missing field 'subject'" in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "ada@example.com",
        "Ada Lovelace <ada@example.com>",
        '"Lovelace, Ada" <ada@example.com>',
        "Zoë Ångström <zoe@exämple.org>",
        '"Ada \\"The Countess\\" L." <ada@example.com>',
        '"back\\\\slash" <b@example.com>',
        '"  Ada   Lovelace " <ada@example.com>',
        '"Ada (admin) <root>" <ada@example.com>',
        '"ada@home" <ada@example.com>',
        "O'Brien <ob@example.com>",
        '"=?utf-8?q?Zo=C3=AB?=" <zoe@example.com>',
        '"john doe"@example.com',
        "ada@[192.0.2.1]",
    ],
)
def test_format_address_parses_back(text: str) -> None:
    address = parse_address(text)

    formatted = format_address(address)

    assert parse_address(formatted) == address
    assert parse_address(formatted).display_name == address.display_name


def test_payload_json_dump_parses_back() -> None:
    email = parse_payload(
        {
            "to": ["Zoë Ångström <zoe@example.com>", "grace@example.com"],
            "cc": '"Lovelace, Ada" <ada@example.com>',
            "reply_to": ['"Support \\"24/7\\"" <help@example.com>'],
            "subject": "Hi",
            "body": "x",
            "from": "Reports <reports@example.org>",
        }
    )

    dumped = email.model_dump(mode="json", by_alias=True, exclude_unset=True)

    assert dumped == {
        "to": ['"Zoë Ångström" <zoe@example.com>', "grace@example.com"],
        "cc": ['"Lovelace, Ada" <ada@example.com>'],
        "reply_to": ['"Support \\"24/7\\"" <help@example.com>'],
        "subject": "Hi",
        "body": "x",
        "from": '"Reports" <reports@example.org>',
    }
    assert EmailPayload.model_validate(dumped) == email


def test_payload_ignores_reserved_keys() -> None:
    email = parse_payload(with_changes(_bananas_trace={"traceparent": "00-1-2-01"}))

    assert email == parse_payload(VALID)
