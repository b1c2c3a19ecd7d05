"""Talk to a registry: one session per repository, with auth, retries and resolve.

``RegistrySession.request`` sends a request to the first host with the capability,
answers 401 challenges (basic, or bearer via the token endpoint, cached per scope) and
retries 429/5xx and dropped connections with exponential back-off. ``resolve`` finds a
reference's root descriptor by HEAD, falling back to GET, checking Docker-Content-Digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplemented_,
    Unavailable,
)
from pycontainerd.images import mediatypes as mt
from pycontainerd.remotes.auth import (
    Credentials,
    TokenCache,
    credentials_from_docker_config,
    parse_challenges,
    token_from_response,
)
from pycontainerd.remotes.hosts import CAP_RESOLVE, RegistryHost, load_hosts
from pycontainerd.remotes.reference import Reference, parse_reference

DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1_JSON = "application/vnd.docker.distribution.manifest.v1+json"
MANIFEST_ACCEPT = ", ".join(
    [mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST, mt.OCI_INDEX, "*/*"]
)
MAX_MANIFEST_SIZE = 4 << 20
RETRIES = 5
BACKOFF_START = 0.1


def tls_context(host: RegistryHost) -> ssl.SSLContext | bool:
    if host.scheme != "https":
        return True
    ctx = ssl.create_default_context()
    for ca in host.ca:
        ctx.load_verify_locations(cafile=ca)
    if host.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for cert, key in host.client_certs:
        ctx.load_cert_chain(cert, key or None)
    return ctx


class RegistrySession:
    """HTTP to one repository (``ref.path``) across its hosts. Use ``async with``."""

    def __init__(
        self,
        ref: Reference,
        *,
        hosts_dir: str | Path | None = None,
        plain_http: bool = False,
        credentials: Credentials | str | None = None,
        hosts: list[RegistryHost] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.ref = ref
        self.hosts = hosts or load_hosts(ref.domain, hosts_dir, plain_http=plain_http)
        if isinstance(credentials, str):
            credentials = Credentials.parse(credentials)
        self._credentials = credentials
        self._clients: dict[str, httpx.AsyncClient] = {}  # by host base URL
        self._tokens = TokenCache()
        self._auth_header: dict[str, str] = {}  # per host: the header that last worked
        # Tests put an in-process registry here; None means real sockets.
        self._transport = transport

    async def __aenter__(self) -> RegistrySession:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def client_for(self, host: RegistryHost) -> httpx.AsyncClient:
        client = self._clients.get(host.base_url)
        if client is None:
            client = httpx.AsyncClient(
                verify=tls_context(host),
                headers=dict(host.headers),
                timeout=httpx.Timeout(30.0, connect=10.0),
                follow_redirects=True,
                transport=self._transport,
            )
            self._clients[host.base_url] = client
        return client

    def hosts_for(self, capability: str) -> list[RegistryHost]:
        found = [h for h in self.hosts if h.can(capability)]
        if not found:
            raise NotFound(f"{self.ref.domain}: no registry host with capability {capability}")
        return found

    def credentials(self, host: RegistryHost) -> Credentials | None:
        if self._credentials is not None:
            return self._credentials
        return credentials_from_docker_config(self.ref.domain) or credentials_from_docker_config(
            host.host
        )

    def url(self, host: RegistryHost, suffix: str) -> str:
        return f"{host.base_url}/{self.ref.path}/{suffix}"

    async def _authorize(
        self, host: RegistryHost, response: httpx.Response, scope: str
    ) -> str | None:
        """The Authorization header answering ``response``'s challenge, or None."""
        challenges = parse_challenges(response.headers.get("www-authenticate", ""))
        creds = self.credentials(host)
        for ch in challenges:
            if ch.scheme == "bearer" and "realm" in ch.params:
                realm = ch.params["realm"]
                service = ch.params.get("service", "")
                key = (realm, service, scope)
                cached = self._tokens.get(key)
                if (
                    cached is not None
                    and response.request.headers.get("authorization") != "Bearer " + cached
                ):
                    return "Bearer " + cached
                self._tokens.invalidate(key)
                params = {"scope": scope}
                if service:
                    params["service"] = service
                headers = {"Authorization": creds.basic_header()} if creds else {}
                resp = await self.client_for(host).get(realm, params=params, headers=headers)
                if resp.status_code in (401, 403):
                    raise FailedPrecondition(
                        f"{self.ref.domain}: token endpoint refused the credentials "
                        f"({resp.status_code}): unauthorized"
                    )
                if resp.status_code != 200:
                    raise Unavailable(f"token endpoint {realm}: HTTP {resp.status_code}")
                token, lifetime = token_from_response(resp.json())
                self._tokens.put(key, token, lifetime)
                return "Bearer " + token
            if ch.scheme == "basic" and creds is not None:
                header = creds.basic_header()
                if response.request.headers.get("authorization") != header:
                    return header
        return None

    async def request(
        self,
        method: str,
        capability: str,
        suffix: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        url: str | None = None,
        stream: bool = False,
        push: bool = False,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[RegistryHost, httpx.Response]:
        """Send to the first host that answers; 401 is answered once per credential change.

        Returns the host and response (open for reading when ``stream``; close it).
        Raises:
            NotFound: 404 from every host.
            FailedPrecondition: unauthorized (401/403) after auth.
            Unavailable: 429/5xx or connection errors after retries.
        """
        scope = f"repository:{self.ref.path}:{'pull,push' if push else 'pull'}"
        last: ContainerdError = NotFound(f"{self.ref}: not found")
        for host in self.hosts_for(capability):
            client = self.client_for(host)
            target = url or self.url(host, suffix)
            delay = BACKOFF_START
            attempts = 0
            hdrs = dict(headers or {})
            if host.host in self._auth_header:
                hdrs["Authorization"] = self._auth_header[host.host]
            authorized = False
            while True:
                attempts += 1
                try:
                    req = client.build_request(method, target, headers=hdrs, content=content)
                    resp = await client.send(req, stream=True)
                except (httpx.TransportError, OSError) as exc:
                    if _is_tls_verify_error(exc):
                        # Retrying cannot fix a certificate nobody vouches for.
                        raise FailedPrecondition(
                            f"{target}: TLS certificate not trusted (set ca or skip_verify "
                            f"in hosts.toml): {exc}"
                        ) from None
                    if attempts >= RETRIES:
                        last = Unavailable(f"{target}: {exc!r}")
                        break
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                if resp.status_code == 401 and not authorized:
                    await resp.aread()
                    await resp.aclose()
                    authorized = True
                    header = await self._authorize(host, resp, scope)
                    if header is None:
                        raise FailedPrecondition(
                            f"{self.ref}: unauthorized: give credentials (user:password)"
                        )
                    hdrs["Authorization"] = header
                    self._auth_header[host.host] = header
                    continue
                if (resp.status_code == 429 or resp.status_code >= 500) and attempts < RETRIES:
                    await resp.aclose()
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                if resp.status_code in ok:
                    if not stream:
                        await resp.aread()
                        await resp.aclose()
                    return host, resp
                body = (await resp.aread())[:512].decode(errors="replace")
                await resp.aclose()
                if resp.status_code == 404:
                    last = NotFound(f"{self.ref}: {method} {target}: not found")
                    break
                if resp.status_code in (401, 403):
                    raise FailedPrecondition(f"{self.ref}: unauthorized: {body.strip()}")
                last = Unavailable(f"{method} {target}: HTTP {resp.status_code}: {body.strip()}")
                break
        raise last

    async def resolve(self) -> Descriptor:
        """The root descriptor of the reference (index or manifest).

        Raises:
            NotFound: no such tag or digest.
            NotImplemented_: a Docker schema 1 manifest.
            FailedPrecondition: the registry's digest contradicts the reference.
            InvalidArgument: a manifest over 4 MiB.
        """
        suffix = f"manifests/{self.ref.object}"
        accept = {"Accept": MANIFEST_ACCEPT}
        try:
            _, resp = await self.request("HEAD", CAP_RESOLVE, suffix, headers=accept)
            head_ok = True
        except NotFound:
            raise
        except ContainerdError:
            head_ok = False
        if head_ok:
            media_type = _media_type(resp)
            digest = resp.headers.get("docker-content-digest", "")
            size = int(resp.headers.get("content-length", "0") or 0)
            _check_media_type(self.ref, media_type)
            if self.ref.digest and digest and digest != self.ref.digest:
                raise FailedPrecondition(f"{self.ref}: registry answered digest {digest}")
            digest = digest or self.ref.digest
            if digest and size:
                _check_size(self.ref, size)
                return Descriptor(media_type, digest, size)
        # No digest or size from HEAD: GET the manifest and hash it ourselves.
        _, resp = await self.request("GET", CAP_RESOLVE, suffix, headers=accept, stream=True)
        try:
            declared = int(resp.headers.get("content-length", "0") or 0)
            _check_size(self.ref, declared)
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                _check_size(self.ref, len(body))
        finally:
            await resp.aclose()
        media_type = _media_type(resp)
        _check_media_type(self.ref, media_type)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if self.ref.digest and digest != self.ref.digest:
            raise FailedPrecondition(f"{self.ref}: manifest digest is {digest}")
        header = resp.headers.get("docker-content-digest")
        if header and header != digest:
            raise FailedPrecondition(
                f"{self.ref}: Docker-Content-Digest {header} differs from content {digest}"
            )
        return Descriptor(media_type, digest, len(body))


def _is_tls_verify_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _media_type(resp: httpx.Response) -> str:
    return str(resp.headers.get("content-type", "")).split(";", 1)[0].strip()


def _check_media_type(ref: Reference, media_type: str) -> None:
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_JSON):
        raise NotImplemented_(
            f"{ref}: Docker schema 1 manifests are not supported; push the image again "
            "with a current Docker or use schema 2 / OCI"
        )


def _check_size(ref: Reference, size: int) -> None:
    if size > MAX_MANIFEST_SIZE:
        raise InvalidArgument(f"{ref}: manifest is {size} bytes, over the 4 MiB limit")


def session_for(ref: str | Reference, **kwargs: Any) -> RegistrySession:
    """A session for ``ref`` (parsed if a string). Raises InvalidArgument for a bad ref."""
    parsed = ref if isinstance(ref, Reference) else parse_reference(ref)
    return RegistrySession(parsed, **kwargs)
