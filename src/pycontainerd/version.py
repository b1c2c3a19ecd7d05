"""Our version, and the git revision it was built from."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from pycontainerd import __version__

VERSION = __version__
PACKAGE = "github.com/pycontainerd/pycontainerd"


@functools.cache
def revision() -> str:
    """The git commit of the source tree, with ``.m`` when it has local changes, or
    ``unknown`` when not running from a checkout."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (".m" if dirty else "")
