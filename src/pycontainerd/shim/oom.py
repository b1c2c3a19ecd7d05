"""OOM notifications of a container's cgroup v1 memory controller, as containerd's
runc shim gets them: an eventfd registered for ``memory.oom_control`` through
``cgroup.event_control``. Without a v1 memory cgroup there is nothing to watch."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")


def memory_cgroup(pid: int) -> Path | None:
    """The v1 memory cgroup directory of ``pid``, or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = MEMORY_ROOT / path.lstrip("/")
            return directory if directory.is_dir() else None
    return None


class OOMWatcher:
    """Calls ``on_oom`` each time the cgroup of a process hits its memory limit."""

    def __init__(self, event_fd: int, control_fd: int) -> None:
        self._event_fd = event_fd
        self._control_fd = control_fd

    @classmethod
    def start(cls, pid: int, on_oom: Callable[[], None]) -> OOMWatcher | None:
        """None when the process has no v1 memory cgroup (or it cannot be watched)."""
        cgroup = memory_cgroup(pid)
        if cgroup is None:
            return None
        event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control_fd = os.open(cgroup / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                (cgroup / "cgroup.event_control").write_text(f"{event_fd} {control_fd}")
            except OSError:
                os.close(control_fd)
                raise
        except OSError:
            os.close(event_fd)
            return None
        watcher = cls(event_fd, control_fd)

        def readable() -> None:
            try:
                os.eventfd_read(event_fd)
            except BlockingIOError:
                return
            except OSError:
                watcher.close()
                return
            # The cgroup going away also signals the eventfd; only a live one is an OOM.
            if cgroup.is_dir():
                on_oom()

        asyncio.get_running_loop().add_reader(event_fd, readable)
        return watcher

    def close(self) -> None:
        if self._event_fd < 0:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(self._event_fd)
        for fd in (self._event_fd, self._control_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._event_fd = self._control_fd = -1
