r"""Layer tarballs without I/O: the tar format, the OCI whiteout rules, and safe paths.

Three pure pieces, driven by :mod:`pycontainerd.archive` in a worker thread:

1. :class:`TarReader`, a tar parser in the h11 style. Feed it bytes with
   :meth:`TarReader.receive_data` (``b""`` means end of input) and pull events with
   :meth:`TarReader.next_event`::

       HEADER --512-byte block--> TarHeader --> Data* --> ENTRY_END --> HEADER ...
         |  \-- 'x' / 'g' / 'L' / 'K' block: its body is read and merged into the
         |      next header (bounded by ``max_meta_size``), never surfaced
         |-- zero block, then a zero block or end of input --> ARCHIVE_END
         '-- end of input exactly on a block boundary      --> ARCHIVE_END

   It reads ustar, PAX (``path``, ``linkpath``, ``size``, ids, names, times and
   ``SCHILY.xattr.*``), GNU long names and base-256 numbers; like Go's ``archive/tar``
   (which containerd uses) it ignores the size of header-only entries and treats a
   PAX global header as an entry of its own rather than merging it. Sparse files are
   refused. :func:`encode_header` writes the same subset, deterministically.

2. :func:`plan`, which turns one :class:`TarHeader` into one :data:`Op` whose path is
   *cleaned* to a relative path inside the root: ``..`` and leading ``/`` are clamped
   at the root, so ``../../etc/passwd`` lands at ``<root>/etc/passwd``, as containerd's
   ``archive.Apply`` does. Whiteouts follow the OCI image spec (layer.md#whiteouts):
   ``.wh.<name>`` deletes ``<name>``, ``.wh..wh..opq`` hides every lower entry of its
   directory.

3. :func:`resolve`, containerd's ``fs.RootPath`` as a pure function: it follows
   symlinks *as if the root were* ``/`` (absolute targets restart at the root, ``..``
   stops at it), asking a caller-supplied ``readlink`` about each component, so a
   layer cannot reach out of the root through a symlink it (or a lower layer) made.

Names are ``str`` decoded from bytes as UTF-8 with ``surrogateescape``, the way
``os.fsdecode`` does on Linux, so any byte string survives the round trip.

Everything wrong with a layer raises :class:`LayerError`, an
:class:`~pycontainerd.errdefs.InvalidArgument` whose message names the entry.
"""

from __future__ import annotations

import enum
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal

from pycontainerd.errdefs import InvalidArgument

BLOCK_SIZE: Final = 512
END_OF_ARCHIVE: Final = bytes(2 * BLOCK_SIZE)

# Go's archive/tar refuses PAX and GNU long-name bodies above 1 MiB; so do we.
MAX_META_SIZE: Final = 1 << 20
# Nothing in a container image is a terabyte. Larger sizes are refused before any
# byte is written, so a header cannot ask for an absurd amount of disk.
MAX_ENTRY_SIZE: Final = 1 << 40
# containerd's fs.RootPath gives up after 255 symlinks.
MAX_LINKS: Final = 255

# Type flags (POSIX ustar, plus the GNU and PAX meta types).
REGTYPE: Final = "0"
AREGTYPE: Final = "\0"
LNKTYPE: Final = "1"
SYMTYPE: Final = "2"
CHRTYPE: Final = "3"
BLKTYPE: Final = "4"
DIRTYPE: Final = "5"
FIFOTYPE: Final = "6"
CONTTYPE: Final = "7"
XHDTYPE: Final = "x"
XGLTYPE: Final = "g"
GNU_LONGNAME: Final = "L"
GNU_LONGLINK: Final = "K"

# Entries whose size field does not announce data (Go's isHeaderOnlyType).
_HEADER_ONLY = frozenset({LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE})
_META_TYPES = frozenset({XHDTYPE, XGLTYPE, GNU_LONGNAME, GNU_LONGLINK})

# OCI image-spec layer.md#whiteouts
WHITEOUT_PREFIX: Final = ".wh."
WHITEOUT_META_PREFIX: Final = ".wh..wh."
WHITEOUT_OPAQUE: Final = ".wh..wh..opq"
# How overlayfs marks an opaque directory in an upper dir (and how containerd writes it).
OVERLAY_OPAQUE_XATTR: Final = "trusted.overlay.opaque"

PAX_XATTR_PREFIX: Final = "SCHILY.xattr."
# PAX keywords folded into TarHeader fields; everything else stays in TarHeader.pax.
_PAX_FIELDS = frozenset(
    {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime"}
)

# Go's maxTime for a 64-bit timespec; containerd's boundTime maps anything outside
# [0, max] to the epoch.
_MAX_TIME_NS: Final = (1 << 63) - 1
_NS: Final = 1_000_000_000


class LayerError(InvalidArgument):
    """A layer that cannot be applied safely or is not a well-formed tar stream."""


class TruncatedLayer(LayerError):
    """The layer stream ended in the middle of a header or of an entry's data."""


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------
# Headers and events
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TarHeader:
    """One tar entry's header, after PAX and GNU extensions have been merged in.

    ``mode`` is the raw mode field (some writers include the file-type bits);
    ``mtime_ns``/``atime_ns`` are nanoseconds since the epoch; ``atime_ns`` is None
    unless a PAX record carried it. ``pax`` holds, sorted by key, the PAX records that
    are not folded into a field: ``SCHILY.xattr.*`` and anything unknown.
    """

    name: str
    typeflag: str = REGTYPE
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    atime_ns: int | None = None
    pax: tuple[tuple[str, bytes], ...] = ()

    @property
    def xattrs(self) -> dict[str, bytes]:
        """Extended attributes carried as ``SCHILY.xattr.<key>`` PAX records."""
        n = len(PAX_XATTR_PREFIX)
        return {k[n:]: v for k, v in self.pax if k.startswith(PAX_XATTR_PREFIX)}

    @property
    def data_size(self) -> int:
        """Bytes of data that follow the header in the stream."""
        return 0 if self.typeflag in _HEADER_ONLY else self.size


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of the current entry's contents (at most what remains of it)."""

    data: bytes


class Marker(enum.Enum):
    """Events without a payload."""

    NEED_DATA = "NEED_DATA"
    ENTRY_END = "ENTRY_END"
    ARCHIVE_END = "ARCHIVE_END"


NEED_DATA: Final = Marker.NEED_DATA
ENTRY_END: Final = Marker.ENTRY_END
ARCHIVE_END: Final = Marker.ARCHIVE_END

Event = TarHeader | Data | Marker


# ---------------------------------------------------------------------------
# Numbers and records
# ---------------------------------------------------------------------------


def _parse_numeric(field: bytes, what: str, offset: int) -> int:
    """Parse an octal or base-256 header field, as Go's parseNumeric does."""
    text = field.strip(b" \x00")
    # Fast path: a plain run of digits (int() alone would also take "+", "_", "0o").
    if text.isdigit():
        try:
            return int(text, 8)
        except ValueError:
            pass  # an 8 or a 9: reported below
    if field and field[0] & 0x80:
        if field[0] & 0x40:
            raise LayerError(f"invalid tar header at offset {offset}: negative {what}")
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if value >> 63:
            raise LayerError(f"invalid tar header at offset {offset}: {what} overflows")
        return value
    text = text.split(b"\x00", 1)[0]
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise LayerError(f"invalid tar header at offset {offset}: bad {what} field {text!r}")
    return int(text, 8)


def _parse_decimal(value: bytes, key: str, entry: str) -> int:
    text = value.decode("ascii", "replace")
    if not text.isdigit():
        raise LayerError(f"entry {entry!r}: invalid PAX {key} {text!r}")
    return int(text)


def _parse_pax_time(value: bytes, key: str, entry: str) -> int:
    """``%d[.%d]`` seconds, possibly negative, to nanoseconds (Go's parsePAXTime)."""
    text = value.decode("ascii", "replace")
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise LayerError(f"entry {entry!r}: invalid PAX {key} {text!r}")
    return sign * (int(whole) * _NS + int((frac + "000000000")[:9]))


def parse_pax_records(body: bytes, *, where: str = "PAX header") -> list[tuple[str, bytes]]:
    """Split a PAX extended header body into ``(keyword, value)`` records.

    Raises:
        LayerError: a record is malformed (bad length, missing ``=`` or newline).
    """
    records: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(body):
        if body[pos] == 0:
            break  # some writers pad the body with NULs
        space = body.find(b" ", pos)
        length_text = body[pos:space] if space != -1 else b""
        if not length_text.isdigit():
            raise LayerError(f"invalid {where}: bad record length at byte {pos}")
        end = pos + int(length_text)
        if end > len(body) or end <= space + 1 or body[end - 1] != 0x0A:
            raise LayerError(f"invalid {where}: truncated record at byte {pos}")
        key, eq, value = body[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise LayerError(f"invalid {where}: record without keyword at byte {pos}")
        records.append((_decode(key), value))
        pos = end
    return records


def _format_octal(value: int, width: int) -> bytes | None:
    """``width - 1`` octal digits and a NUL, or None when it does not fit."""
    if value < 0 or value >= 8 ** (width - 1):
        return None
    return b"%0*o\x00" % (width - 1, value)


def _format_base256(value: int, width: int) -> bytes:
    if value < 0 or value.bit_length() > 8 * width - 1:
        raise LayerError(f"number {value} does not fit a {width}-byte tar field")
    raw = bytearray(value.to_bytes(width, "big"))
    raw[0] |= 0x80
    return bytes(raw)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + _encode(key) + b"=" + value + b"\n"
    # The length prefix counts its own digits: grow it until it is stable.
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _format_pax_time(ns: int) -> bytes:
    sign = "-" if ns < 0 else ""
    secs, frac = divmod(abs(ns), _NS)
    if frac:
        return f"{sign}{secs}.{frac:09d}".rstrip("0").encode()
    return f"{sign}{secs}".encode()


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _checksum_ok(block: bytes, offset: int) -> bool:
    stored = _parse_numeric(block[148:156], "checksum", offset)
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored == unsigned:
        return True
    # Some old writers summed signed chars.
    signed = unsigned - 256 * sum(1 for b in block if b > 127)
    signed += 256 * sum(1 for b in block[148:156] if b > 127)
    return stored == signed


class TarReader:
    """Incremental tar parser: bytes in, :data:`Event` values out, no I/O.

    Args:
        max_entry_size: entries announcing more data raise :class:`LayerError`.
        max_meta_size: PAX and GNU long-name bodies above this raise LayerError.

    ``offset`` is the number of stream bytes consumed so far (for messages), and
    ``current`` the header whose data is being read, if any.
    """

    def __init__(
        self, *, max_entry_size: int = MAX_ENTRY_SIZE, max_meta_size: int = MAX_META_SIZE
    ) -> None:
        self._max_entry_size = max_entry_size
        self._max_meta_size = max_meta_size
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._state: Literal["header", "zero", "meta", "data", "padding", "end"] = "header"
        self._remaining = 0  # data (or meta body) bytes left
        self._padding = 0
        self._meta_type = ""
        self._meta_records: dict[str, bytes] = {}
        self._meta_header: bytes = b""
        self._has_meta = False
        self.offset = 0
        self.current: TarHeader | None = None

    def receive_data(self, data: bytes) -> None:
        """Append input; ``b""`` marks the end of the stream.

        Raises:
            RuntimeError: data after the end of the stream was signalled.
        """
        if self._eof:
            raise RuntimeError("TarReader.receive_data after end of input")
        if not data:
            self._eof = True
        elif self._pos >= len(self._buf):
            self._buf, self._pos = data, 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> bytes:
        start = self._pos
        self._pos += n
        self.offset += n
        if start == 0 and n == len(self._buf):
            return self._buf
        return self._buf[start : start + n]

    def _truncated(self, what: str) -> TruncatedLayer:
        return TruncatedLayer(f"unexpected end of layer at offset {self.offset} {what}")

    def next_event(self) -> Event:
        """The next event, or :data:`NEED_DATA` until more input arrives.

        Raises:
            LayerError: malformed header, unsupported entry, limits exceeded.
            TruncatedLayer: end of input inside a header, an entry's data or
                after an extended header with no entry to apply it to.
        """
        while True:
            state = self._state
            if state == "data":
                if self._remaining == 0:
                    self._state = "padding"
                    self.current = None
                    return ENTRY_END
                avail = self._available()
                if avail == 0:
                    if self._eof:
                        assert self.current is not None
                        got = self.current.data_size - self._remaining
                        raise self._truncated(
                            f"in the data of entry {self.current.name!r}"
                            f" ({got} of {self.current.data_size} bytes)"
                        )
                    return NEED_DATA
                n = min(avail, self._remaining)
                self._remaining -= n
                return Data(self._take(n))
            if state == "padding":
                n = min(self._available(), self._padding)
                self._take(n)
                self._padding -= n
                if self._padding:
                    if not self._eof:
                        return NEED_DATA
                    # Go tolerates end of input inside the padding: treat as the end.
                    self._state = "end"
                    return ARCHIVE_END
                self._state = "header"
                continue
            if state == "header":
                if self._available() < BLOCK_SIZE:
                    if not self._eof:
                        return NEED_DATA
                    if self._available() == 0 and not self._has_meta:
                        # End of input on a block boundary is a valid end (Go's io.EOF).
                        self._state = "end"
                        return ARCHIVE_END
                    if self._available() == 0:
                        raise self._truncated("after an extended header")
                    raise self._truncated("inside a tar header")
                block = self._take(BLOCK_SIZE)
                if block.count(0) == BLOCK_SIZE:
                    self._state = "zero"
                    continue
                header = self._parse_block(block, self.offset - BLOCK_SIZE)
                if header is not None:
                    return header
                continue
            if state == "zero":
                if self._available() < BLOCK_SIZE:
                    if not self._eof:
                        return NEED_DATA
                    self._state = "end"
                    return ARCHIVE_END
                block = self._take(BLOCK_SIZE)
                if block.count(0) != BLOCK_SIZE:
                    raise LayerError(
                        f"invalid tar stream at offset {self.offset - BLOCK_SIZE}:"
                        " data after a zero block"
                    )
                self._state = "end"
                return ARCHIVE_END
            if state == "meta":
                need = self._remaining + self._padding
                if self._available() < need:
                    if self._eof:
                        raise self._truncated("inside an extended header")
                    return NEED_DATA
                body = self._take(need)[: self._remaining]
                self._remaining = self._padding = 0
                self._state = "header"
                global_header = self._merge_meta(body)
                if global_header is not None:
                    return global_header
                continue
            return ARCHIVE_END

    def _merge_meta(self, body: bytes) -> TarHeader | None:
        kind = self._meta_type
        if kind in (GNU_LONGNAME, GNU_LONGLINK):
            key = "path" if kind == GNU_LONGNAME else "linkpath"
            self._meta_records[key] = body.split(b"\x00", 1)[0]
            self._has_meta = True
            return None
        records = parse_pax_records(body, where=f"PAX header at offset {self.offset}")
        if kind == XGLTYPE:
            # Go's reader hands a global header out as an entry of its own instead of
            # merging it into later entries; containerd then ignores it. Same here: its
            # body is already consumed, so it surfaces as an entry without data.
            header = replace(self._build(self._meta_header, dict(records), XGLTYPE), size=0)
            self.current = header
            self._state = "data"
            return header
        for key, value in records:
            self._meta_records[key] = value
        self._has_meta = True
        return None

    def _parse_block(self, block: bytes, offset: int) -> TarHeader | None:
        if not _checksum_ok(block, offset):
            raise LayerError(f"invalid tar header at offset {offset}: checksum mismatch")
        typeflag = chr(block[156])
        if typeflag in _META_TYPES:
            size = _parse_numeric(block[124:136], "size", offset)
            if size > self._max_meta_size:
                raise LayerError(
                    f"invalid tar header at offset {offset}: extended header of"
                    f" {size} bytes exceeds {self._max_meta_size}"
                )
            self._meta_type = typeflag
            self._meta_header = block
            self._remaining = size
            self._padding = -size % BLOCK_SIZE
            self._state = "meta"
            return None
        records, self._meta_records, self._has_meta = self._meta_records, {}, False
        header = self._build(block, records, typeflag)
        size = header.data_size
        if size > self._max_entry_size:
            raise LayerError(
                f"entry {header.name!r}: size {size} exceeds the limit of"
                f" {self._max_entry_size} bytes"
            )
        self.current = header
        self._remaining = size
        self._padding = -size % BLOCK_SIZE
        self._state = "data"
        return header

    def _build(self, block: bytes, records: dict[str, bytes], typeflag: str) -> TarHeader:
        offset = self.offset
        magic = block[257:265]
        name = block[0:100].split(b"\x00", 1)[0]
        ustar = magic == b"ustar\x0000"
        if ustar and block[345] != 0:
            name = block[345:500].split(b"\x00", 1)[0] + b"/" + name
        if "path" in records:
            name = records["path"]
        entry = _decode(name)
        if b"\x00" in name:
            raise LayerError(f"entry {entry!r}: name contains a NUL byte")
        linkname = records.get("linkpath", block[157:257].split(b"\x00", 1)[0])
        if b"\x00" in linkname:
            raise LayerError(f"entry {entry!r}: link name contains a NUL byte")
        modern = ustar or magic == b"ustar  \x00"
        size = _parse_numeric(block[124:136], "size", offset)
        uid = _parse_numeric(block[108:116], "uid", offset)
        gid = _parse_numeric(block[116:124], "gid", offset)
        mtime_ns = _parse_numeric(block[136:148], "mtime", offset) * _NS
        uname = _decode(block[265:297].split(b"\x00", 1)[0]) if modern else ""
        gname = _decode(block[297:329].split(b"\x00", 1)[0]) if modern else ""
        # Device numbers mean something only for devices (and cost time to parse).
        device = modern and typeflag in (CHRTYPE, BLKTYPE)
        devmajor = _parse_numeric(block[329:337], "devmajor", offset) if device else 0
        devminor = _parse_numeric(block[337:345], "devminor", offset) if device else 0
        atime_ns: int | None = None
        extra: dict[str, bytes] = {}
        for key, value in records.items():
            if key == "size":
                size = _parse_decimal(value, key, entry)
            elif key == "uid":
                uid = _parse_decimal(value, key, entry)
            elif key == "gid":
                gid = _parse_decimal(value, key, entry)
            elif key == "uname":
                uname = _decode(value)
            elif key == "gname":
                gname = _decode(value)
            elif key == "mtime":
                mtime_ns = _parse_pax_time(value, key, entry)
            elif key == "atime":
                atime_ns = _parse_pax_time(value, key, entry)
            elif key == "ctime":
                _parse_pax_time(value, key, entry)  # validated like Go, then dropped
            elif key.startswith("GNU.sparse."):
                raise LayerError(f"entry {entry!r}: sparse files are not supported")
            elif key not in _PAX_FIELDS:
                extra[key] = value
        if typeflag == "S":
            raise LayerError(f"entry {entry!r}: sparse files are not supported")
        if typeflag == AREGTYPE:
            # Pre-POSIX archives mark directories only by a trailing slash (Go does this too).
            typeflag = DIRTYPE if name.endswith(b"/") else REGTYPE
        return TarHeader(
            name=entry,
            typeflag=typeflag,
            size=0 if typeflag in _HEADER_ONLY else size,
            mode=_parse_numeric(block[100:108], "mode", offset),
            uid=uid,
            gid=gid,
            mtime_ns=mtime_ns,
            linkname=_decode(linkname),
            uname=uname,
            gname=gname,
            devmajor=devmajor,
            devminor=devminor,
            atime_ns=atime_ns,
            pax=tuple(sorted(extra.items())),
        )


def read_all(data: bytes) -> list[tuple[TarHeader, bytes]]:
    """Parse a whole in-memory archive: each header with its contents.

    Raises:
        LayerError: as :meth:`TarReader.next_event`.
    """
    reader = TarReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    entries: list[tuple[TarHeader, bytes]] = []
    chunks: list[bytes] = []
    while (event := reader.next_event()) is not ARCHIVE_END:
        if isinstance(event, TarHeader):
            chunks = []
            entries.append((event, b""))
        elif isinstance(event, Data):
            chunks.append(event.data)
        elif event is ENTRY_END:
            entries[-1] = (entries[-1][0], b"".join(chunks))
    return entries


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def padding(size: int) -> bytes:
    """The NUL bytes that follow ``size`` bytes of data to fill the last block."""
    return bytes(-size % BLOCK_SIZE)


# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname
# devmajor devminor prefix (unused: long names go to PAX) and 12 bytes of padding.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")
_ZERO8 = b"0000000\x00"


def _octal(value: int, width: int) -> bytes:
    # Values that do not fit are carried by PAX records; the field is then zero.
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    return bytes(width)


def _ustar_block(
    *,
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: str,
    linkname: bytes = b"",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: bytes = _ZERO8,
    devminor: bytes = _ZERO8,
) -> bytes:
    block = _USTAR.pack(
        name,
        _octal(mode, 8),
        _octal(uid, 8),
        _octal(gid, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        b"        ",
        typeflag.encode("latin-1"),
        linkname,
        b"ustar\x0000",
        uname,
        gname,
        devmajor,
        devminor,
        b"",
    )
    return block[:148] + b"%06o\x00 " % sum(block) + block[156:]


def encode_header(header: TarHeader) -> bytes:
    """The header blocks for one entry: a PAX extended header when needed, then ustar.

    The output depends only on ``header`` (records sorted, fixed PAX header fields), so
    equal trees give byte-equal layers. Fields that fit ustar stay there; long or
    non-ASCII names, big numbers, sub-second or negative times, ``atime_ns`` and the
    ``pax`` records go to PAX, as Go's writer does.

    Raises:
        LayerError: a name or link name contains NUL, a value is negative, or a
            device number does not fit even in base-256.
    """
    name, linkname = _encode(header.name), _encode(header.linkname)
    if b"\x00" in name or b"\x00" in linkname:
        raise LayerError(f"entry {header.name!r}: names cannot contain NUL bytes")
    if min(header.size, header.uid, header.gid, header.mode, header.devmajor) < 0:
        raise LayerError(f"entry {header.name!r}: negative header field")
    if header.devminor < 0:
        raise LayerError(f"entry {header.name!r}: negative header field")
    size = 0 if header.typeflag in _HEADER_ONLY else header.size
    records: dict[str, bytes] = {}

    def fits_string(raw: bytes, width: int) -> bool:
        return len(raw) <= width and raw.isascii()

    if not fits_string(name, 100):
        records["path"] = name
    if not fits_string(linkname, 100):
        records["linkpath"] = linkname
    uname, gname = _encode(header.uname), _encode(header.gname)
    if not fits_string(uname, 32):
        records["uname"] = uname
    if not fits_string(gname, 32):
        records["gname"] = gname
    for key, number, width in (("uid", header.uid, 8), ("gid", header.gid, 8), ("size", size, 12)):
        if _format_octal(number, width) is None:
            records[key] = str(number).encode()
    mtime_s, mtime_frac = divmod(header.mtime_ns, _NS)
    if mtime_frac or _format_octal(mtime_s, 12) is None:
        records["mtime"] = _format_pax_time(header.mtime_ns)
    if header.atime_ns is not None:
        records["atime"] = _format_pax_time(header.atime_ns)
    for key, value in header.pax:
        if key in _PAX_FIELDS:
            raise LayerError(f"entry {header.name!r}: PAX record {key!r} duplicates a field")
        records[key] = value

    def dev(value: int) -> bytes:
        raw = _format_octal(value, 8)
        return raw if raw is not None else _format_base256(value, 8)

    out = b""
    if records:
        body = b"".join(_pax_record(k, records[k]) for k in sorted(records))
        out = _ustar_block(
            name=b"././@PaxHeader",
            mode=0o644,
            uid=0,
            gid=0,
            size=len(body),
            mtime=0,
            typeflag=XHDTYPE,
        )
        out += body + padding(len(body))
    return out + _ustar_block(
        name=name if "path" not in records else name[:100],
        mode=header.mode & 0o7777777,
        uid=header.uid,
        gid=header.gid,
        size=size,
        mtime=max(mtime_s, 0),
        typeflag=header.typeflag,
        linkname=linkname,
        uname=uname if "uname" not in records else b"",
        gname=gname if "gname" not in records else b"",
        devmajor=dev(header.devmajor),
        devminor=dev(header.devminor),
    )


def encode_entry(header: TarHeader, data: bytes = b"") -> bytes:
    """Header blocks, contents and padding of one entry (for small entries and tests).

    Raises:
        LayerError: as :func:`encode_header`, or ``data`` does not match the size.
    """
    if len(data) != header.data_size:
        raise LayerError(f"entry {header.name!r}: {len(data)} bytes for size {header.size}")
    return encode_header(header) + data + padding(len(data))


def header_for(
    path: str,
    *,
    st_mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime_ns: int,
    linkname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
) -> TarHeader | None:
    """The header a diff writes for a file with this ``lstat`` result, or None.

    ``path`` is relative to the root. As containerd's ChangeWriter does: directories get
    a trailing slash, times are truncated to whole seconds, user and group names are
    left empty (no host lookups), and sockets are not archived (None). ``linkname`` is
    the symlink target (the writer turns repeated inodes into hardlinks itself).

    Raises:
        LayerError: an unknown file type.
    """
    fmt = stat.S_IFMT(st_mode)
    typeflag = {
        stat.S_IFREG: REGTYPE,
        stat.S_IFDIR: DIRTYPE,
        stat.S_IFLNK: SYMTYPE,
        stat.S_IFCHR: CHRTYPE,
        stat.S_IFBLK: BLKTYPE,
        stat.S_IFIFO: FIFOTYPE,
    }.get(fmt)
    if fmt == stat.S_IFSOCK:
        return None
    if typeflag is None:
        raise LayerError(f"{path!r}: unsupported file type {oct(fmt)}")
    name = path.strip("/")
    if typeflag == DIRTYPE:
        name += "/"
    pax = tuple(sorted((PAX_XATTR_PREFIX + k, v) for k, v in (xattrs or {}).items()))
    return TarHeader(
        name=name,
        typeflag=typeflag,
        size=size if typeflag == REGTYPE else 0,
        mode=stat.S_IMODE(st_mode),
        uid=uid,
        gid=gid,
        mtime_ns=(mtime_ns // _NS) * _NS,
        linkname=linkname if typeflag in (SYMTYPE, LNKTYPE) else "",
        devmajor=devmajor if typeflag in (CHRTYPE, BLKTYPE) else 0,
        devminor=devminor if typeflag in (CHRTYPE, BLKTYPE) else 0,
        pax=pax,
    )


def whiteout_header(path: str, *, mtime_ns: int = 0) -> TarHeader:
    """The OCI whiteout entry (``dir/.wh.name``) recording that ``path`` was deleted.

    containerd stamps whiteouts with the current time; we use a fixed time (the epoch
    by default) so that the same change always gives the same layer digest.
    """
    parent, _, base = path.strip("/").rpartition("/")
    name = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
    return TarHeader(name=name, typeflag=REGTYPE, mode=0o644, mtime_ns=mtime_ns)


def opaque_header(directory: str, *, mtime_ns: int = 0) -> TarHeader:
    """The OCI opaque marker (``dir/.wh..wh..opq``) hiding lower entries of ``directory``."""
    parent = directory.strip("/")
    name = f"{parent}/{WHITEOUT_OPAQUE}" if parent else WHITEOUT_OPAQUE
    return TarHeader(name=name, typeflag=REGTYPE, mode=0o644, mtime_ns=mtime_ns)


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def clean_path(name: str) -> str:
    """Clean ``name`` lexically into a relative path inside the root.

    Leading slashes are dropped and ``..`` stops at the root, exactly like Go's
    ``filepath.Clean("/" + name)`` that containerd applies to entry names. The result
    has no ``.``, ``..`` or empty components; ``""`` is the root itself.
    """
    parts: list[str] = []
    for comp in name.split("/"):
        if comp == "..":
            if parts:
                parts.pop()
        elif comp and comp != ".":
            parts.append(comp)
    return "/".join(parts)


def clean_link_target(name: str, linkname: str) -> str:
    """Clean a hardlink target; unlike an entry name, it may not climb out of the root.

    A leading ``/`` is taken as the root (GNU tar strips it too); a ``..`` that would
    go above the root is refused rather than clamped, because a hardlink pointing there
    can only be an attempt to link a host file.

    Raises:
        LayerError: the target escapes the root or is the root itself.
    """
    parts: list[str] = []
    for comp in linkname.split("/"):
        if comp == "..":
            if not parts:
                raise LayerError(f"entry {name!r}: hardlink target {linkname!r} escapes the root")
            parts.pop()
        elif comp and comp != ".":
            parts.append(comp)
    if not parts:
        raise LayerError(f"entry {name!r}: hardlink target {linkname!r} is the root")
    return "/".join(parts)


def split_path(path: str) -> tuple[str, str]:
    """``("a/b", "c")`` for ``"a/b/c"``; ``("", "c")`` for ``"c"``."""
    parent, _, base = path.rpartition("/")
    return parent, base


def join_path(parent: str, base: str) -> str:
    return f"{parent}/{base}" if parent else base


Readlink = Callable[[str], str | None]


def resolve(
    path: str, readlink: Readlink, *, follow_final: bool = True, max_links: int = MAX_LINKS
) -> str:
    """Resolve ``path`` inside a root, following symlinks as if the root were ``/``.

    ``readlink(p)`` is the caller's I/O: for a cleaned relative path ``p`` whose parent
    components are already resolved, return the symlink target if ``p`` is a symlink
    and None otherwise (also when it does not exist). Absolute targets restart at the
    root and ``..`` stops at it, so the result never leaves the root (containerd's
    ``fs.RootPath``). With ``follow_final=False`` the last component is kept as is,
    which is how an entry's own name is treated (a layer replaces a symlink, it does
    not write through it).

    Returns:
        A cleaned relative path ("" for the root) whose components, except perhaps the
        last when ``follow_final`` is False, were not symlinks when asked.

    Raises:
        LayerError: more than ``max_links`` symlinks were followed (a loop).
    """
    pending = [c for c in reversed(path.split("/")) if c and c != "."]
    resolved: list[str] = []
    links = 0
    while pending:
        comp = pending.pop()
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        if not pending and not follow_final:
            resolved.append(comp)
            break
        candidate = "/".join((*resolved, comp))
        target = readlink(candidate)
        if target is None:
            resolved.append(comp)
            continue
        links += 1
        if links > max_links:
            raise LayerError(f"too many levels of symbolic links resolving {path!r}")
        if target.startswith("/"):
            resolved = []
        pending.extend(c for c in reversed(target.split("/")) if c and c != ".")
    return "/".join(resolved)


# ---------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attrs:
    """Metadata applied after an entry is created, in containerd's order.

    ``mode`` is permission bits plus setuid/setgid/sticky (``0o7777``); times are
    nanoseconds already bounded the way containerd does (outside ``[0, 2**63)`` -> 0,
    and atime is never before mtime). ``xattrs`` are the ones to set;
    ``ignored_xattrs`` the keys a layer may not set (``trusted.*``, see :func:`plan`).
    """

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...] = ()
    ignored_xattrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CreateFile:
    """Create a regular file at ``path`` from the entry's ``size`` bytes of data."""

    name: str
    path: str
    attrs: Attrs
    size: int


@dataclass(frozen=True, slots=True)
class Mkdir:
    """Create a directory, or merge metadata into an existing one."""

    name: str
    path: str
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Symlink:
    """Create a symlink. ``target`` is stored verbatim; it is never followed here."""

    name: str
    path: str
    target: str
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Hardlink:
    """Link ``path`` to ``target``, a cleaned path inside the root (not followed)."""

    name: str
    path: str
    target: str
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Mknod:
    """Create a character or block device, or a FIFO."""

    name: str
    path: str
    kind: Literal["char", "block", "fifo"]
    major: int
    minor: int
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Whiteout:
    """``target`` was deleted in this layer. ``uid``/``gid`` own an overlay whiteout."""

    name: str
    target: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Opaque:
    """Entries of ``dir`` from lower layers are hidden (``dir`` "" is the root)."""

    name: str
    dir: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do for this entry; ``reason`` says why (for logs)."""

    name: str
    reason: str


Op = CreateFile | Mkdir | Symlink | Hardlink | Mknod | Whiteout | Opaque | Skip

_MKNOD_KINDS: dict[str, Literal["char", "block", "fifo"]] = {
    CHRTYPE: "char",
    BLKTYPE: "block",
    FIFOTYPE: "fifo",
}


def bound_time(ns: int) -> int:
    """containerd's boundTime: times a timespec cannot hold become the epoch."""
    return ns if 0 <= ns <= _MAX_TIME_NS else 0


def _attrs(header: TarHeader) -> Attrs:
    keep: list[tuple[str, bytes]] = []
    ignored: list[str] = []
    for key, value in sorted(header.xattrs.items()) if header.pax else ():
        # containerd refuses admin attributes from an archive (setxattr returns
        # ENOTSUP, which it logs and ignores): a layer must not forge overlayfs'
        # trusted.overlay.* markers. security.* (file capabilities) is applied.
        if key.startswith("trusted."):
            ignored.append(key)
        else:
            keep.append((key, value))
    atime = header.atime_ns if header.atime_ns is not None else header.mtime_ns
    return Attrs(
        mode=header.mode & 0o7777,
        uid=header.uid,
        gid=header.gid,
        atime_ns=bound_time(max(atime, header.mtime_ns)),
        mtime_ns=bound_time(header.mtime_ns),
        xattrs=tuple(keep),
        ignored_xattrs=tuple(ignored),
    )


def plan(header: TarHeader) -> Op:
    """Decide what one layer entry does, with its path cleaned inside the root.

    The returned paths are relative and lexically clean (see :func:`clean_path`); the
    executor still resolves the *parent* with :func:`resolve` so that symlinks on disk
    are followed inside the root, and never follows the last component.

    Raises:
        LayerError: a whiteout of ``.``/``..``/nothing, a non-directory entry whose
            name is the root, a hardlink escaping the root, an empty symlink target,
            an unknown entry type, a negative id.
    """
    name = header.name
    path = clean_path(name)
    parent, base = split_path(path)
    if header.typeflag == XGLTYPE:
        return Skip(name, "PAX global header")
    if base.startswith(WHITEOUT_PREFIX):
        if base == WHITEOUT_OPAQUE:
            return Opaque(name, parent)
        if base.startswith(WHITEOUT_META_PREFIX):
            # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless elsewhere.
            return Skip(name, "whiteout metadata entry")
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise LayerError(f"entry {name!r}: invalid whiteout name {base!r}")
        return Whiteout(name, join_path(parent, target), header.uid, header.gid)
    if header.uid < 0 or header.gid < 0:
        raise LayerError(f"entry {name!r}: negative uid or gid")
    if not path:
        if header.typeflag == DIRTYPE:
            # "./" heads most layers; containerd ignores entries that resolve to root.
            return Skip(name, "resolves to the root directory")
        raise LayerError(f"entry {name!r}: resolves to the layer root")
    typeflag = header.typeflag
    if typeflag in (REGTYPE, AREGTYPE, CONTTYPE):
        return CreateFile(name, path, _attrs(header), header.size)
    if typeflag == DIRTYPE:
        return Mkdir(name, path, _attrs(header))
    if typeflag == SYMTYPE:
        if not header.linkname:
            raise LayerError(f"entry {name!r}: symlink with an empty target")
        return Symlink(name, path, header.linkname, _attrs(header))
    if typeflag == LNKTYPE:
        return Hardlink(name, path, clean_link_target(name, header.linkname), _attrs(header))
    kind = _MKNOD_KINDS.get(typeflag)
    if kind is not None:
        return Mknod(name, path, kind, header.devmajor, header.devminor, _attrs(header))
    raise LayerError(f"entry {name!r}: unsupported tar entry type {typeflag!r}")


def plan_all(headers: Iterable[TarHeader]) -> list[Op]:
    """:func:`plan` for each header (a convenience for tests and dry runs).

    Raises:
        LayerError: as :func:`plan`.
    """
    return [plan(h) for h in headers]
