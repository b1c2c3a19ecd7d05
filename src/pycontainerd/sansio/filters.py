r"""containerd's filter language: parsing and matching, with no I/O.

A filter string is a comma separated list of selectors, all of which must match
(logical AND). A list of filter strings, as carried by containerd's List and
Subscribe requests, matches when any one of them matches (logical OR).

Grammar (what containerd 1.6 ``filters.Parse`` accepts)::

    filters   := selector ( "," selector )*
    selector  := fieldpath [ operator value ]
    fieldpath := field ( "." field )*
    field     := [A-Za-z0-9_]+ | '"' chars '"'
    operator  := "==" | "!=" | "~="
    value     := bare | '"' chars '"'
               | '/' chars '/' | '|' chars '|'      (the last two only after "~=")
    bare      := a first character that is not a space, quote, separator or
                 operator character, then any letters, marks, numbers,
                 punctuation or symbols except ","

``chars`` are Go string-literal characters: no raw newline or NUL, and the escapes
``\a \b \f \n \r \t \v \\``, ``\`` followed by the delimiter itself, ``\NNN``
(octal byte), ``\xHH`` (byte), ``\uHHHH`` and ``\UHHHHHHHH``. Spaces may precede
any token, but not a ``,`` nor the end of input: ``"name == x"`` parses while
``"name==x "`` and ``"name ,x"`` are errors, as in containerd.

Semantics of one selector against an :data:`Adaptor` returning ``(value, present)``:

* ``path``         -- ``present``
* ``path==v``      -- ``present and value == v``
* ``path!=v``      -- ``value != v`` (an absent field compares as its value, ``""``)
* ``path~=re``     -- ``re`` searches ``value`` (RE2 syntax, see :func:`_translate_re2`)

``parse("")`` and ``parse_all([])`` match everything; so does ``parse_all`` when any
of its strings is empty. Every syntax error, and every regular expression that
cannot be compiled, raises :class:`~pycontainerd.errdefs.InvalidArgument` whose
message has containerd's shape: ``filters: parse error: [before >|x|< after]: why``.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from pycontainerd.errdefs import InvalidArgument

__all__ = [
    "ALWAYS",
    "Adaptor",
    "AllOf",
    "Always",
    "AnyOf",
    "Filter",
    "Operator",
    "Selector",
    "adapt_mapping",
    "parse",
    "parse_all",
    "quote",
]

Adaptor = Callable[[tuple[str, ...]], tuple[str, bool]]
"""Maps a field path to ``(value, present)`` for one record."""


class Filter(Protocol):
    def match(self, adaptor: Adaptor) -> bool: ...


class Operator(enum.Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True, slots=True)
class Always:
    """Matches every record."""

    def match(self, adaptor: Adaptor) -> bool:
        return True


ALWAYS: Final = Always()


@dataclass(frozen=True, slots=True)
class Selector:
    """One ``fieldpath[operator value]`` term.

    For ``MATCHES`` the regular expression is compiled on construction (raising
    InvalidArgument if it is invalid) unless the parser already supplies it.
    """

    fieldpath: tuple[str, ...]
    operator: Operator = Operator.PRESENT
    value: str = ""
    regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.operator is Operator.MATCHES and self.regex is None:
            try:
                compiled = _compile_re2(self.value)
            except _RegexError as exc:
                raise InvalidArgument(f"filters: invalid regular expression: {exc}") from None
            object.__setattr__(self, "regex", compiled)

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        if self.operator is Operator.PRESENT:
            return present
        if self.operator is Operator.EQUAL:
            return present and value == self.value
        if self.operator is Operator.NOT_EQUAL:
            # containerd ignores presence here: an absent field is "" and so differs.
            return value != self.value
        return self.regex is not None and self.regex.search(value) is not None


@dataclass(frozen=True, slots=True)
class AllOf:
    """Matches when every member matches (the ``,`` of one filter string)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Matches when some member matches (a list of filter strings)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


def parse(text: str) -> Filter:
    """Parse one filter string; ``""`` matches everything."""
    if text == "":
        return ALWAYS
    return _Parser(text).parse()


def parse_all(filters: Iterable[str]) -> Filter:
    """Parse filter strings into their disjunction; no strings match everything."""
    if isinstance(filters, str):
        # A bare string would be iterated character by character.
        raise TypeError("parse_all takes an iterable of filter strings, not a str")
    parsed = tuple(parse(text) for text in filters)
    if not parsed:
        return ALWAYS
    return AnyOf(parsed)


def adapt_mapping(
    fields: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    **maps: Mapping[str, str],
) -> Adaptor:
    """Adapt a record made of scalar fields plus string maps (labels, annotations...).

    A path whose first element names a map looks up the rest of the path joined
    with ``.`` in that map, so ``labels.a.b`` and ``labels."a.b"`` both find the
    label ``a.b`` (containerd's ``checkMap``); a label set to ``""`` is present.
    Any other path is joined with ``.`` and looked up in ``fields``, where, as in
    containerd's adaptors, an empty string counts as absent.
    """
    nested: dict[str, Mapping[str, str]] = dict(maps)
    if labels is not None:
        nested["labels"] = labels

    def adaptor(path: tuple[str, ...]) -> tuple[str, bool]:
        if not path:
            return "", False
        sub = nested.get(path[0])
        if sub is not None:
            key = ".".join(path[1:])
            return (sub[key], True) if key in sub else ("", False)
        value = fields.get(".".join(path), "")
        return value, value != ""

    return adaptor


_QUOTE_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def quote(value: str) -> str:
    """Render ``value`` as a double-quoted literal that parses back to exactly ``value``.

    Usable for both field path elements and values. Lone surrogates have no
    representation (Go strings are UTF-8 bytes) and raise ValueError.
    """
    out = ['"']
    for ch in value:
        if ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        elif ch == "\ufffd":
            # The scanner rejects a raw U+FFFD, as Go's does (it reads as a rune error).
            out.append("\\ufffd")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError(f"cannot quote lone surrogate {ch!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --- scanner --------------------------------------------------------------------------
#
# A port of containerd's scanner, state machine and quirks included: the parser's
# error positions and messages depend on exactly when runes are consumed. Positions
# here are code point indices where Go's are byte offsets.

# Multi-character sentinels can never equal a scanned character.
_EOF: Final = "<eof>"
_ILLEGAL: Final = "<illegal>"


class _Tok(enum.Enum):
    EOF = enum.auto()
    QUOTED = enum.auto()
    VALUE = enum.auto()
    FIELD = enum.auto()
    SEPARATOR = enum.auto()
    OPERATOR = enum.auto()
    ILLEGAL = enum.auto()
    OTHER = enum.auto()


_FIELD_CHARS: Final = frozenset("_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_OPERATOR_CHARS: Final = frozenset("=!~")
_QUOTE_CHARS: Final = frozenset('/|"')
_SEPARATOR_CHARS: Final = frozenset(",.")
# Go's unicode.IsSpace, which differs from str.isspace (e.g. on \x1c-\x1f).
_GO_SPACES: Final = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SIMPLE_ESCAPES: Final = frozenset("abfnrtv\\")
_OCTAL: Final = frozenset("01234567")
_HEX_VALUES: Final = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}


def _is_value_char(ch: str) -> bool:
    # Go: letter, digit, number, graphic or punctuation, minus ',' and spaces;
    # that is the general categories L, M, N, P and S.
    return (
        len(ch) == 1
        and ch != ","
        and ch not in _GO_SPACES
        and unicodedata.category(ch)[0] in "LMNPS"
    )


class _Scanner:
    __slots__ = ("err", "pos", "ppos", "text", "value")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0  # start of the last rune read
        self.ppos = 0  # just past the last rune read
        self.value = False  # an operator was just read, so a bare word is a value
        self.err = ""  # first error only, as in Go

    def error(self, msg: str) -> None:
        if not self.err:
            self.err = msg

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        self.pos = self.ppos
        if self.ppos >= len(self.text):
            return _EOF
        ch = self.text[self.ppos]
        self.ppos += 1
        if ch == "\ufffd" or "\ud800" <= ch <= "\udfff":
            self.error("rune error")
            return _ILLEGAL
        if ch == "\x00":
            self.error("unexpected null")
            return _ILLEGAL
        return ch

    def peek(self) -> str:
        pos, ppos = self.pos, self.ppos
        ch = self.next()
        self.pos, self.ppos = pos, ppos
        return ch

    def scan(self) -> tuple[int, _Tok, str]:
        ch = self.next()
        pos = self.pos
        while ch in _GO_SPACES:
            ch = self.next()
            pos = self.pos
        if ch in _QUOTE_CHARS:
            tok = _Tok.QUOTED if self._scan_quoted(ch) else _Tok.ILLEGAL
            return pos, tok, self.text[pos : self.ppos]
        if ch in _SEPARATOR_CHARS:
            self.value = False
            return pos, _Tok.SEPARATOR, self.text[pos : self.ppos]
        if ch in _OPERATOR_CHARS:
            self._scan_while(lambda c: c in _OPERATOR_CHARS)
            self.value = True
            return pos, _Tok.OPERATOR, self.text[pos : self.ppos]
        if self.value and ch not in (_EOF, _ILLEGAL):
            # The first character of a value is taken whatever it is.
            self._scan_while(_is_value_char)
            self.value = False
            return pos, _Tok.VALUE, self.text[pos : self.ppos]
        if ch in _FIELD_CHARS:
            self._scan_while(lambda c: c in _FIELD_CHARS)
            return pos, _Tok.FIELD, self.text[pos : self.ppos]
        tok = {_EOF: _Tok.EOF, _ILLEGAL: _Tok.ILLEGAL}.get(ch, _Tok.OTHER)
        return self.pos, tok, ""

    def _scan_while(self, accept: Callable[[str], bool]) -> None:
        while accept(self.peek()):
            self.next()

    def _scan_quoted(self, quote: str) -> bool:
        legal = True
        ch = self.next()
        while ch != quote:
            if ch in ("\n", _EOF, _ILLEGAL):
                self.error("quoted literal not terminated")
                return False
            if ch == "\\":
                ch, ok = self._scan_escape(quote)
                legal = legal and ok
            else:
                ch = self.next()
        return legal

    def _scan_escape(self, quote: str) -> tuple[str, bool]:
        # Returns the rune after the escape, which the caller then examines.
        ch = self.next()
        if ch in _SIMPLE_ESCAPES or ch == quote:
            return self.next(), True
        if ch in _OCTAL:
            return self._scan_digits(ch, 8, 3)
        if ch == "x":
            return self._scan_digits(self.next(), 16, 2)
        if ch == "u":
            return self._scan_digits(self.next(), 16, 4)
        if ch == "U":
            return self._scan_digits(self.next(), 16, 8)
        self.error("illegal escape sequence")
        return ch, False

    def _scan_digits(self, ch: str, base: int, count: int) -> tuple[str, bool]:
        while count > 0 and _HEX_VALUES.get(ch, 16) < base:
            ch = self.next()
            count -= 1
        if count > 0:
            self.error("illegal numeric escape sequence")
            return ch, False
        return ch, True


class _QuoteError(Exception):
    pass


def _unquote(token: str) -> str:
    """Decode a scanned quoted token (Go's strconv.Unquote, plus ``/`` and ``|``)."""
    if len(token) < 2 or token[0] != token[-1]:
        raise _QuoteError
    delim, body = token[0], token[1:-1]
    if "\n" in body:
        raise _QuoteError
    # Built as bytes: \x and octal escapes denote bytes, not code points.
    buf = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == delim:
            raise _QuoteError
        if ch != "\\":
            buf += ch.encode()
            i += 1
            continue
        if i + 1 >= len(body):
            raise _QuoteError
        esc = body[i + 1]
        i += 2
        if esc in "abfnrtv":
            buf.append(ord(_C_ESCAPES[esc]))
        elif esc in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i : i + width]
            if len(digits) < width or any(d not in _HEX_VALUES for d in digits):
                raise _QuoteError
            i += width
            code = int(digits, 16)
            if esc == "x":
                buf.append(code)
            elif code > 0x10FFFF:
                raise _QuoteError
            else:
                buf += _encode_rune(code)
        elif esc in _OCTAL:
            digits = esc + body[i : i + 2]
            if len(digits) < 3 or any(d not in _OCTAL for d in digits):
                raise _QuoteError
            i += 2
            code = int(digits, 8)
            if code > 255:
                raise _QuoteError
            buf.append(code)
        elif esc == "\\" or (esc in "'\"|/" and esc == delim):
            buf += esc.encode()
        else:
            raise _QuoteError
    # Bytes that are not UTF-8 survive as lone surrogates, which no real value
    # contains, so they compare unequal just as Go's invalid strings would.
    return buf.decode("utf-8", "surrogateescape")


_C_ESCAPES: Final = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _encode_rune(code: int) -> bytes:
    # Go's utf8.EncodeRune writes U+FFFD for surrogate halves.
    if 0xD800 <= code <= 0xDFFF:
        code = 0xFFFD
    return chr(code).encode()


# --- parser ---------------------------------------------------------------------------

_OPERATORS: Final = {"==": Operator.EQUAL, "!=": Operator.NOT_EQUAL, "~=": Operator.MATCHES}


class _Parser:
    __slots__ = ("scanner", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.scanner = _Scanner(text)

    def error(self, pos: int, msg: str) -> InvalidArgument:
        text = self.text
        if pos < len(text):
            where = f"[{text[:pos]} >|{text[pos]}|< {text[pos + 1 :]}]"
        else:
            where = f"[{text}]"
        return InvalidArgument(f"filters: parse error: {where}: {msg}")

    def parse(self) -> AllOf:
        selectors: list[Filter] = [self.selector()]
        while True:
            ch = self.scanner.peek()
            if ch == ",":
                self.scanner.scan()
                selectors.append(self.selector())
            elif ch == _EOF:
                return AllOf(tuple(selectors))
            else:
                shown = "\ufffd" if ch == _ILLEGAL else ch
                raise self.error(self.scanner.ppos, f"unexpected input: {shown}")

    def selector(self) -> Selector:
        path = self.fieldpath()
        if self.scanner.peek() in (",", _EOF):
            return Selector(path)
        op = self.operator()
        pos, value = self.value(alt_quotes=op is Operator.MATCHES)
        if op is not Operator.MATCHES:
            return Selector(path, op, value)
        # containerd compiles lazily and silently never matches a bad pattern;
        # rejecting it up front tells the client what is wrong.
        try:
            regex = _compile_re2(value)
        except _RegexError as exc:
            raise self.error(pos, f"invalid regular expression: {exc}") from None
        return Selector(path, op, value, regex)

    def fieldpath(self) -> tuple[str, ...]:
        path = [self.field()]
        while self.scanner.peek() == ".":
            self.scanner.scan()
            path.append(self.field())
        return tuple(path)

    def field(self) -> str:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.FIELD:
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, alt_quotes=False)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, "expected field or quoted")

    def operator(self) -> Operator:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.OPERATOR:
            if text in _OPERATORS:
                return _OPERATORS[text]
            raise self.error(pos, f'unsupported operator "{text}"')
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, *, alt_quotes: bool) -> tuple[int, str]:
        pos, tok, text = self.scanner.scan()
        if tok in (_Tok.VALUE, _Tok.FIELD):
            return pos, text
        if tok is _Tok.QUOTED:
            return pos, self.unquote(pos, text, alt_quotes=alt_quotes)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, "expected value or quoted")

    def unquote(self, pos: int, text: str, *, alt_quotes: bool) -> str:
        if not alt_quotes and text[0] not in "'\"":
            raise self.error(pos, "invalid quote encountered")
        try:
            return _unquote(text)
        except _QuoteError:
            raise self.error(pos, "unquoting failed: quote syntax error") from None


# --- regular expressions --------------------------------------------------------------
#
# containerd compiles ~= values with Go's regexp (RE2 syntax). Python's re differs in
# ways that silently change matches, so patterns are rewritten into an equivalent
# Python pattern first, and Python-only syntax (lookaround, backreferences,
# possessive repeats) is refused as RE2 would. Known gaps: \p{...} classes and the
# (?U) flag are refused, and Python's matcher backtracks where RE2 does not.


class _RegexError(Exception):
    pass


_MAX_RUNE: Final = 0x10FFFF
_Ranges = list[tuple[int, int]]

_PERL_CLASSES: Final[dict[str, _Ranges]] = {
    "d": [(0x30, 0x39)],
    "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}


def _r(spec: str) -> _Ranges:
    # "a-zA-Z_" style range spec over ASCII, for the POSIX table.
    out: _Ranges = []
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            out.append((ord(spec[i]), ord(spec[i + 2])))
            i += 3
        else:
            out.append((ord(spec[i]), ord(spec[i])))
            i += 1
    return out


_POSIX_CLASSES: Final[dict[str, _Ranges]] = {
    "alnum": _r("0-9A-Za-z"),
    "alpha": _r("A-Za-z"),
    "ascii": [(0, 0x7F)],
    "blank": _r("\t "),
    "cntrl": [(0, 0x1F), (0x7F, 0x7F)],
    "digit": _r("0-9"),
    "graph": _r("!-~"),
    "lower": _r("a-z"),
    "print": _r(" -~"),
    "punct": _r("!-/:-@[-`{-~"),
    "space": _r("\t-\r "),
    "upper": _r("A-Z"),
    "word": _r("0-9A-Za-z_"),
    "xdigit": _r("0-9A-Fa-f"),
}

_REPEAT: Final = re.compile(r"\{([0-9]+)(?:,([0-9]*))?\}")
_MAX_REPEAT: Final = 1000
_MULTILINE: Final = re.compile(r"\(\?[imsU]*m")


def _merge(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _negate(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    start = 0
    for lo, hi in _merge(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_RUNE:
        out.append((start, _MAX_RUNE))
    return out


def _class_text(ranges: _Ranges) -> str:
    # Explicit code point ranges sidestep Python's Unicode-aware \d\w\s and its
    # nested-set warnings.
    merged = _merge(ranges)
    if not merged:
        return "[^\\U00000000-\\U0010ffff]"
    parts = [f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in merged]
    return "[" + "".join(parts) + "]"


def _escape_char(pattern: str, i: int) -> tuple[int, int]:
    """Decode the single-character escape at ``pattern[i] == '\\'``."""
    if i + 1 >= len(pattern):
        raise _RegexError("trailing backslash at end of expression")
    esc = pattern[i + 1]
    if esc in _C_ESCAPES:
        return ord(_C_ESCAPES[esc]), i + 2
    if esc in _OCTAL:
        # \1-\7 alone would be a backreference, which RE2 lacks.
        if esc != "0" and (i + 2 >= len(pattern) or pattern[i + 2] not in _OCTAL):
            raise _RegexError(f"invalid escape sequence: \\{esc}")
        j = i + 2
        while j < len(pattern) and j < i + 4 and pattern[j] in _OCTAL:
            j += 1
        return int(pattern[i + 1 : j], 8), j
    if esc == "x":
        if pattern.startswith("{", i + 2):
            end = pattern.find("}", i + 3)
            digits = pattern[i + 3 : end] if end >= 0 else ""
            if not digits or any(d not in _HEX_VALUES for d in digits):
                raise _RegexError("invalid escape sequence: \\x{")
            code = int(digits, 16)
            if code > _MAX_RUNE:
                raise _RegexError("invalid escape sequence: \\x{")
            return code, end + 1
        digits = pattern[i + 2 : i + 4]
        if len(digits) < 2 or any(d not in _HEX_VALUES for d in digits):
            raise _RegexError("invalid escape sequence: \\x")
        return int(digits, 16), i + 4
    if esc.isascii() and not esc.isalnum():
        return ord(esc), i + 2
    raise _RegexError(f"invalid escape sequence: \\{esc}")


def _perl_class(pattern: str, i: int) -> _Ranges | None:
    """Ranges for ``\\d \\D \\w \\W \\s \\S`` at ``i``, or None for other text."""
    esc = pattern[i + 1 : i + 2]
    if pattern[i] != "\\" or esc.lower() not in _PERL_CLASSES:
        return None
    ranges = _PERL_CLASSES[esc.lower()]
    return _negate(ranges) if esc.isupper() else ranges


def _parse_class(pattern: str, i: int) -> tuple[_Ranges, int]:
    """Parse the bracket expression at ``pattern[i] == '['``."""
    i += 1
    negated = pattern.startswith("^", i)
    if negated:
        i += 1
    ranges: _Ranges = []
    first = True  # a leading ']' is literal
    while True:
        if i >= len(pattern):
            raise _RegexError("missing closing ]")
        if pattern[i] == "]" and not first:
            i += 1
            break
        first = False
        if pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) >= 0:
            name = pattern[i + 2 : end]
            group = _POSIX_CLASSES.get(name.removeprefix("^"))
            if group is None:
                raise _RegexError(f"invalid character class range: [:{name}:]")
            ranges += _negate(group) if name.startswith("^") else group
            i = end + 2
            continue
        if pattern.startswith(("\\p", "\\P"), i):
            raise _RegexError("Unicode classes (\\p) are not supported")
        perl = _perl_class(pattern, i)
        if perl is not None:
            ranges += perl
            i += 2
            continue
        lo, i = _class_char(pattern, i)
        hi = lo
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise _RegexError("invalid character class range")
        ranges.append((lo, hi))
    return (_negate(ranges) if negated else ranges), i


def _class_char(pattern: str, i: int) -> tuple[int, int]:
    if i >= len(pattern):
        raise _RegexError("missing closing ]")
    if pattern[i] == "\\":
        return _escape_char(pattern, i)
    return ord(pattern[i]), i + 1


def _translate_escape(pattern: str, i: int) -> tuple[str, int]:
    """Python text for the escape at ``pattern[i] == '\\'`` outside a class."""
    esc = pattern[i + 1 : i + 2]
    perl = _perl_class(pattern, i)
    if perl is not None:
        return _class_text(perl), i + 2
    if esc in ("b", "B"):
        return f"(?a:\\{esc})", i + 2  # RE2 word boundaries are ASCII-only
    if esc == "A":
        return "\\A", i + 2
    if esc == "z":
        return "\\Z", i + 2
    if esc == "Q":
        end = pattern.find("\\E", i + 2)
        stop = len(pattern) if end < 0 else end
        return re.escape(pattern[i + 2 : stop]), (stop if end < 0 else end + 2)
    if esc in ("p", "P"):
        raise _RegexError("Unicode classes (\\p) are not supported")
    code, j = _escape_char(pattern, i)
    return re.escape(chr(code)), j


def _translate_re2(pattern: str) -> str:
    """Rewrite an RE2 pattern as a Python pattern with the same matches."""
    out: list[str] = []
    # Per open group, the flag sets opened by a bare "(?flags)" inside it. Python
    # only allows those at the very start, so each becomes a scoped "(?flags:"
    # closed (and reopened) at the enclosing group's ")" (and each "|").
    frames: list[list[str]] = [[]]
    multiline = _MULTILINE.search(pattern) is not None
    after_repeat = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        repeat = False
        if ch == "\\":
            text, i = _translate_escape(pattern, i)
            out.append(text)
        elif ch == "[":
            ranges, i = _parse_class(pattern, i)
            out.append(_class_text(ranges))
        elif ch == "(" and pattern.startswith("(?P<", i):
            out.append("(?P<")
            frames.append([])
            i += 4
        elif ch == "(" and pattern.startswith("(?", i):
            end = i + 2
            while end < len(pattern) and pattern[end] in "imsU-":
                end += 1
            flags = pattern[i + 2 : end]
            if (
                end >= len(pattern)
                or pattern[end] not in ":)"
                or (pattern[end] == ")" and not flags)
            ):
                raise _RegexError(f"invalid or unsupported Perl syntax: {pattern[i : end + 1]}")
            if "U" in flags:
                raise _RegexError("the ungreedy flag (?U) is not supported")
            out.append(f"(?{flags}:")
            if pattern[end] == ":":
                frames.append([])
            else:
                frames[-1].append(flags)
            i = end + 1
        elif ch == "(":
            out.append("(")
            frames.append([])
            i += 1
        elif ch == ")":
            if len(frames) > 1:
                out.append(")" * len(frames.pop()))
            out.append(")")  # an unbalanced ")" is left for re to reject
            i += 1
        elif ch == "|":
            opened = frames[-1]
            out.append(")" * len(opened) + "|" + "".join(f"(?{f}:" for f in opened))
            i += 1
        elif ch in "*+?":
            if ch == "+" and after_repeat:
                # Python 3.11 would read a possessive repeat; RE2 rejects it.
                raise _RegexError("invalid nested repetition operator")
            out.append(ch)
            repeat = ch != "?" or not after_repeat  # "x*?" is lazy, not a new repeat
            i += 1
        elif ch == "{" and (m := _REPEAT.match(pattern, i)) is not None:
            if any(len(n) > 4 or int(n) > _MAX_REPEAT for n in m.groups() if n):
                raise _RegexError(f"invalid repeat count: {m.group(0)}")
            out.append(m.group(0))
            repeat = True
            i = m.end()
        elif ch == "{":
            out.append("\\{")  # RE2 reads "{" that starts no repeat (e.g. "{,3}") literally
            i += 1
        elif ch == "$" and not multiline:
            out.append("\\Z")  # RE2's "$" is end of text, not "before a final newline"
            i += 1
        else:
            out.append(ch)
            i += 1
        after_repeat = repeat
    for opened in reversed(frames):
        out.append(")" * len(opened))
    return "".join(out)


def _compile_re2(pattern: str) -> re.Pattern[str]:
    if any("\ud800" <= ch <= "\udfff" for ch in pattern):
        raise _RegexError("invalid UTF-8")
    try:
        return re.compile(_translate_re2(pattern))
    except re.error as exc:
        raise _RegexError(exc.msg) from None
    except (OverflowError, RecursionError) as exc:
        raise _RegexError(str(exc)) from None
