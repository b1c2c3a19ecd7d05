"""Digest strings (``algorithm:hex``) validated at the edge, and their hashers."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pycontainerd.errdefs import InvalidArgument

# containerd accepts sha256 (canonical), sha384 and sha512 (go-digest's set).
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}
CANONICAL = "sha256"
_HEX = re.compile(r"[a-f0-9]+")
_ALGO = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*")


def parse(dgst: str) -> tuple[str, str]:
    """Split and validate a digest.

    Raises:
        InvalidArgument: malformed, unknown algorithm, or wrong hex length.
    """
    algorithm, sep, hexpart = dgst.partition(":")
    if not sep or not algorithm or not hexpart or not _ALGO.fullmatch(algorithm):
        raise InvalidArgument(f"invalid digest {dgst!r}: invalid checksum digest format")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise InvalidArgument(f"invalid digest {dgst!r}: unsupported digest algorithm")
    if len(hexpart) != length or not _HEX.fullmatch(hexpart):
        raise InvalidArgument(f"invalid digest {dgst!r}: invalid checksum digest length")
    return algorithm, hexpart


def validate(dgst: str) -> str:
    parse(dgst)
    return dgst


def hasher(algorithm: str = CANONICAL) -> Any:
    """A fresh hashlib object. Raises InvalidArgument for an unknown algorithm."""
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def of(data: bytes, algorithm: str = CANONICAL) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
