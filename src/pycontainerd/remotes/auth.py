"""Registry authentication: challenges, credentials and bearer tokens.

``parse_challenges`` reads ``WWW-Authenticate`` (RFC 7235) without I/O. ``Credentials``
come from explicit ``user:pass`` or ``~/.docker/config.json``. ``TokenCache`` keeps bearer
tokens per (realm, service, scope) until they expire or the registry answers 401 again.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pycontainerd.errdefs import InvalidArgument

# Docker Hub's credentials are stored under its v1 index URL.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
# A token without expires_in is good for 60 s (distribution token spec).
DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge: a scheme (lowercased) and its parameters (keys lowercased)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def parse(cls, user_pass: str) -> Credentials:
        """``user:pass`` (the password may contain ``:``). Raises InvalidArgument."""
        user, sep, password = user_pass.partition(":")
        if not sep or not user:
            raise InvalidArgument("credentials must be given as user:password")
        return cls(user, password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TOKEN_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def bare(self) -> str:
        # Lenient: an unquoted value runs to the next comma or space (RFC 7235 wants a
        # token, but registries send URLs unquoted too).
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ", \t":
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        # Caller saw the opening quote.
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif ch == '"':
                return "".join(out)
            else:
                out.append(ch)
        raise InvalidArgument("www-authenticate: unterminated quoted string")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one ``WWW-Authenticate`` value.

    ``Bearer realm="https://auth",service="reg",scope="repository:a:pull"`` gives one
    Challenge("bearer", {...}). Several challenges may share the header, comma separated.

    Raises:
        InvalidArgument: an unterminated quoted string.
    """
    s = _Scanner(header)
    out: list[Challenge] = []
    while True:
        s.skip_space()
        while s.peek() == ",":
            s.pos += 1
            s.skip_space()
        scheme = s.token()
        if not scheme:
            return out
        params: dict[str, str] = {}
        while True:
            s.skip_space()
            mark = s.pos
            key = s.token()
            s.skip_space()
            if not key or s.peek() != "=":
                # Not a parameter: the start of the next challenge (or a token68).
                s.pos = mark
                break
            s.pos += 1
            s.skip_space()
            value = s.quoted() if s.peek() == '"' else s.bare()
            params[key.lower()] = value
            s.skip_space()
            if s.peek() != ",":
                break
            s.pos += 1
            # A comma then "key=" continues params; anything else starts a new challenge.
            s.skip_space()
            look = s.pos
            nxt = s.token()
            s.skip_space()
            is_param = bool(nxt) and s.peek() == "="
            s.pos = look
            if not is_param:
                break
        out.append(Challenge(scheme.lower(), params))
        if s.pos >= len(s.text):
            return out
        if s.peek() not in ", \t" and not s.peek().isalpha():
            return out


def docker_config_path() -> Path:
    config_dir = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(config_dir) / "config.json"


def credentials_from_docker_config(
    host: str, config: Mapping[str, object] | None = None
) -> Credentials | None:
    """Credentials for registry ``host`` from docker's ``config.json`` ``auths``.

    ``config`` is the parsed file (read from $DOCKER_CONFIG or ~/.docker when None).
    Entries may be keyed by host or URL; ``auth`` is base64 ``user:pass``, or
    ``username``/``password`` are given. Credential helpers are not run.

    Raises:
        InvalidArgument: the file is not JSON, or an ``auth`` value is not base64.
    """
    if config is None:
        path = docker_config_path()
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise InvalidArgument(f"{path}: {exc}") from None
    auths = config.get("auths") if isinstance(config, Mapping) else None
    if not isinstance(auths, Mapping):
        return None
    wanted = {host}
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        wanted |= {DOCKER_HUB_AUTH_KEY, "docker.io", "index.docker.io", "registry-1.docker.io"}
    for key, entry in auths.items():
        if _auth_key_host(str(key)) not in wanted and key not in wanted:
            continue
        if not isinstance(entry, Mapping):
            continue
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except ValueError:
                raise InvalidArgument(f"docker config: auth for {key} is not base64") from None
            return Credentials.parse(decoded)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
        if entry.get("identitytoken"):
            return Credentials("", str(entry["identitytoken"]))
    return None


def _auth_key_host(key: str) -> str:
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens by (realm, service, scope); dropped on expiry or a fresh 401."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], _Token] = {}

    def get(self, key: tuple[str, str, str]) -> str | None:
        tok = self._tokens.get(key)
        if tok is None or tok.expires_at <= time.monotonic():
            return None
        return tok.value

    def put(self, key: tuple[str, str, str], value: str, expires_in: float) -> None:
        # Renew a little early so a token does not expire mid-request.
        lifetime = max(expires_in - 5.0, 1.0)
        self._tokens[key] = _Token(value, time.monotonic() + lifetime)

    def invalidate(self, key: tuple[str, str, str]) -> None:
        self._tokens.pop(key, None)


def token_from_response(body: Mapping[str, object]) -> tuple[str, float]:
    """The token and its lifetime from a token endpoint's JSON. Raises InvalidArgument."""
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise InvalidArgument("token endpoint answered without a token")
    expires = body.get("expires_in")
    lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 0.0
    return token, lifetime or DEFAULT_TOKEN_LIFETIME
