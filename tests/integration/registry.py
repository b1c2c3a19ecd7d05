"""Debian's docker-registry on a loopback port, for pull and push tests."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REGISTRY = shutil.which("docker-registry")


@dataclass
class Registry:
    host: str  # 127.0.0.1:<port>
    proc: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_registry(
    base: Path,
    timeout: float = 30,
    *,
    tls: tuple[Path, Path] | None = None,
    htpasswd: Path | None = None,
    token: tuple[str, str, str, Path] | None = None,
) -> Iterator[Registry]:
    """A registry storing under ``base``; ready when it logs that it listens.

    Plain HTTP unless ``tls`` (certificate, key) is given; ``htpasswd`` (bcrypt entries)
    turns on basic auth; ``token`` (realm, service, issuer, root certificate) turns on
    bearer token auth.
    """
    assert REGISTRY is not None
    port = _free_port()
    config = base / "config.yml"
    text = (
        "version: 0.1\n"
        "log:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: pycontainerd-tests\n"
    )
    if tls is not None:
        text += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    if htpasswd is not None:
        text += f"auth:\n  htpasswd:\n    realm: pycontainerd-tests\n    path: {htpasswd}\n"
    if token is not None:
        realm, service, issuer, root = token
        text += (
            f"auth:\n  token:\n    realm: {realm}\n    service: {service}\n"
            f"    issuer: {issuer}\n    rootcertbundle: {root}\n"
        )
    config.write_text(text)
    log = base / "registry.log"
    proc = subprocess.Popen(
        [REGISTRY, "serve", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    try:
        deadline = time.monotonic() + timeout
        # The registry logs "listening on <addr>" once its socket is bound.
        while b"listening on" not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise RuntimeError(f"registry did not start:\n{seen.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"registry exited:\n{seen.decode()}")
            seen += chunk
        drain = threading.Thread(target=_drain, args=(proc.stdout, log, seen), daemon=True)
        drain.start()
        yield Registry(f"127.0.0.1:{port}", proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _drain(stream: IO[bytes], log: Path, head: bytes) -> None:
    with log.open("wb") as out:
        out.write(head)
        with contextlib.suppress(OSError, ValueError):
            while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                out.write(chunk)
