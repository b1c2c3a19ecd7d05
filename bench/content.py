"""The content workload: ``ctr content ingest`` of a 1 GiB blob, then ``ctr content get``.

Each round ingests a different blob (a fresh random file made before the round, not
timed), so neither daemon can answer "already exists" from an earlier round's bytes
still on disk; both hash and write every byte, then stream it back to ctr.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

SIZE = 1 << 30
CHUNK = 8 << 20


def make_blob(path: Path) -> str:
    """Write SIZE random bytes to ``path``; return their sha256 digest."""
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(SIZE // CHUNK):
            chunk = os.urandom(CHUNK)
            h.update(chunk)
            f.write(chunk)
    return f"sha256:{h.hexdigest()}"


def ingest_and_get(ctr: list[str], namespace: str, blob: Path, digest: str) -> None:
    """Ingest ``blob`` through stdin with its expected digest, read it back, check the size."""
    with blob.open("rb") as stdin:
        subprocess.run(
            [*ctr, "-n", namespace, "content", "ingest", "--expected-digest", digest,
             "--expected-size", str(SIZE), f"bench-{digest[7:19]}"],
            stdin=stdin, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    got = subprocess.Popen(
        [*ctr, "-n", namespace, "content", "get", digest], stdout=subprocess.PIPE
    )
    assert got.stdout is not None
    total = 0
    while chunk := got.stdout.read(CHUNK):
        total += len(chunk)
    if got.wait() != 0 or total != SIZE:
        raise RuntimeError(f"content get {digest}: exit {got.returncode}, {total} bytes")
