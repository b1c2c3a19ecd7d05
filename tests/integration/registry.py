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
def run_registry(base: Path, timeout: float = 30) -> Iterator[Registry]:
    """A plain-HTTP registry storing under ``base``; ready when ``/v2/`` answers."""
    assert REGISTRY is not None
    port = _free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: pycontainerd-tests\n"
    )
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
