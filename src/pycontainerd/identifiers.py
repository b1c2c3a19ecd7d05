"""containerd's identifier and label rules, checked once at the edge."""

from __future__ import annotations

import re

from pycontainerd.errdefs import InvalidArgument

MAX_IDENTIFIER_LENGTH = 76
# The pattern text is part of the error message clients print, so it is spelled as
# containerd spells it.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)
MAX_LABEL_SIZE = 4096


def validate(s: str) -> None:
    """Check an identifier (namespace, container id, lease id …).

    Raises:
        InvalidArgument: empty, longer than 76 characters, or not alphanumerics joined
        by single ``.``, ``_`` or ``-``.
    """
    if not s:
        raise InvalidArgument("identifier must not be empty")
    if len(s) > MAX_IDENTIFIER_LENGTH:
        raise InvalidArgument(
            f"identifier {_go_quote(s)} greater than maximum length "
            f"({MAX_IDENTIFIER_LENGTH} characters)"
        )
    if not _IDENTIFIER_RE.fullmatch(s):
        raise InvalidArgument(f"identifier {_go_quote(s)} must match {IDENTIFIER_PATTERN}")


def validate_label(key: str, value: str) -> None:
    """Raises InvalidArgument when a label's key and value exceed 4096 bytes together."""
    if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
        short = key[:10] if len(key) > 10 else key
        raise InvalidArgument(
            f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {short}"
        )


def _go_quote(s: str) -> str:
    """Quote like Go's %q for the printable ASCII that identifiers are made of."""
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


go_quote = _go_quote
