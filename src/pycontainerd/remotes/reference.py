"""Image references, parsed and normalised as docker and containerd do (sans-I/O).

Grammar (distribution/reference)::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ("/" path-component)*
    domain    := host [":" port]   -- a first component with "." or ":", or "localhost"

``busybox`` normalises to ``docker.io/library/busybox:latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pycontainerd.errdefs import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``: the repository, as containerd's ``Spec.Locator``."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest if known, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, "")


def validate_digest(digest: str) -> str:
    """Check ``algorithm:hex``; sha256/sha512 must have their exact lengths.

    Raises:
        InvalidArgument: a malformed digest.
    """
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}")
    algorithm, hex_ = digest.split(":", 1)
    expected = {"sha256": 64, "sha384": 96, "sha512": 128}.get(algorithm)
    if expected is not None and (len(hex_) != expected or hex_ != hex_.lower()):
        raise InvalidArgument(f"invalid {algorithm} digest {digest!r}")
    return digest


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        # Docker treats a first component with uppercase as a domain too, but only when
        # it has a dot or port; plain names belong to Docker Hub.
        return DEFAULT_DOMAIN, name
    if first == LEGACY_DEFAULT_DOMAIN:
        first = DEFAULT_DOMAIN
    return first, rest


def parse_reference(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``ref``; a bare name gets ``latest`` unless a digest is given.

    Raises:
        InvalidArgument: the reference is malformed, has uppercase in its path, or is
            too long, with the rule it broke.
    """
    if not ref:
        raise InvalidArgument("invalid reference: empty")
    rest, at, digest = ref.partition("@")
    if at:
        validate_digest(digest)
    tag = ""
    # A tag is after the last ":" that follows the last "/" (a ":" before it is a port).
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidArgument(f"invalid reference {ref!r}: invalid tag {tag!r}")
    domain, path = _split_domain(rest)
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidArgument(f"invalid reference {ref!r}: invalid domain {domain!r}")
    if path.lower() != path and _PATH_RE.fullmatch(path.lower()):
        raise InvalidArgument(f"invalid reference {ref!r}: repository name must be lowercase")
    if not _PATH_RE.fullmatch(path):
        raise InvalidArgument(f"invalid reference {ref!r}: invalid repository name {path!r}")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(
            f"invalid reference {ref!r}: repository name longer than {NAME_TOTAL_LENGTH_MAX}"
        )
    if not tag and not digest and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
