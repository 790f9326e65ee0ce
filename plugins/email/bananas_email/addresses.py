"""Parsing and formatting of single email addresses, with or without a display name."""

from __future__ import annotations

from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import getaddresses


def breaks_header(character: str) -> bool:
    """Return True for a character that must not appear in a header value.

    That is a control character other than tab, DEL, or one of the three line separators
    outside ASCII that ``str.splitlines()`` splits on: the email package rejects a header
    with a line break, and a payload could otherwise inject headers.
    """
    return (ord(character) < 32 and character != "\t") or character in "\x7f\x85\u2028\u2029"


def parse_address(value: object) -> Address:
    """Parse one address such as ``ada@example.com`` or ``Ada Lovelace <ada@example.com>``.

    Raises ValueError saying what is wrong: not a string, a control character (a line break
    could inject a header), several addresses in one string, or an address that RFC 5322
    does not allow. An Address is returned unchanged.
    """
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        # ValueError, not TypeError, because pydantic reports only ValueError as a field error.
        raise ValueError(f"expected a string, got {type(value).__name__}")  # noqa: TRY004
    if any(breaks_header(character) or character == "\t" for character in value):
        raise ValueError(f"{value!r} contains a line break or another control character")

    parsed = getaddresses([value])
    if len(parsed) > 1 and all(address for _, address in parsed):
        raise ValueError(
            f"{value!r} contains {len(parsed)} addresses: give each address as its own list item"
        )
    if len(parsed) != 1 or not parsed[0][1]:
        raise ValueError(f"{value!r} is not an email address such as ada@example.com")

    display_name, addr_spec = parsed[0]
    try:
        address = Address(display_name=display_name, addr_spec=addr_spec)
    # The header parser raises a defect (a ValueError), HeaderParseError, or IndexError
    # for an address that ends in '@' (seen on Python 3.11).
    except (ValueError, HeaderParseError, IndexError):
        raise ValueError(f"{value!r} is not an email address such as ada@example.com") from None
    # A domain with an empty label, such as '.x' from 'ada@\u00a0.x', cannot be sent to.
    if not address.username or not address.domain or "" in address.domain.split("."):
        raise ValueError(f"{value!r} is not an email address such as ada@example.com")
    # The parser drops spaces inside a domain and the quotes around a local part, so
    # 'ada@exa mple.com' would go to example.com, and '"a..b"@example.com' would be stored in
    # a form that no longer parses when the job runs. The address must read back as itself.
    if _spaced_domain(value) or not _reads_back(address):
        raise ValueError(f"{value!r} is not an email address that can be sent as written")
    return address


def _spaced_domain(value: str) -> bool:
    # The domain as written: after the last '@', before a closing '>' or a comment.
    domain = value.rpartition("@")[2].split(">")[0].split("(")[0].strip()
    return any(character.isspace() for character in domain)


def _reads_back(address: Address) -> bool:
    try:
        again = Address(addr_spec=address.addr_spec)
    except (ValueError, HeaderParseError, IndexError):
        return False
    return (again.username, again.domain) == (address.username, address.domain)


def format_address(address: Address) -> str:
    """Format ``address`` as a string that ``parse_address`` turns back into an equal Address.

    A display name is always quoted, with backslashes and double quotes escaped. ``str()``
    leaves some names unquoted, and the parser then drops their leading, trailing and
    repeated spaces. Non-ASCII characters are kept as they are, not encoded as RFC 2047
    words, because ``parse_address`` does not decode those.
    """
    if not address.display_name:
        return address.addr_spec
    escaped = address.display_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{address.addr_spec}>'
