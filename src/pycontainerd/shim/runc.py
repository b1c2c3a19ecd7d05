"""runc (or crun, via the runc options' BinaryName) driven by argument lists.

Argument builders are pure functions; ``Runc`` runs them through the shim's reaper and
turns a failure into an errdefs kind carrying runc's own message from its JSON log.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycontainerd import errdefs
from pycontainerd.shim.reaper import Reaper

DEFAULT_BINARY = "runc"
DEFAULT_ROOT = "/run/containerd/runc"


@dataclass(frozen=True, slots=True)
class RuncConfig:
    """The global runc flags of one container (from the runc ``Options``)."""

    binary: str
    root: str
    log: str
    systemd_cgroup: bool = False

    def command(self, *args: str) -> list[str]:
        argv = [self.binary, "--root", self.root, "--log", self.log, "--log-format", "json"]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return [*argv, *args]


def config_for(
    namespace: str, bundle: Path, binary_name: str = "", root: str = "", systemd: bool = False
) -> RuncConfig:
    """containerd's defaults: ``runc`` and ``/run/containerd/runc/<namespace>``."""
    return RuncConfig(
        binary=binary_name or DEFAULT_BINARY,
        root=root or f"{DEFAULT_ROOT}/{namespace}",
        log=str(bundle / "log.json"),
        systemd_cgroup=systemd,
    )


def create_args(
    bundle: str,
    pid_file: str,
    container_id: str,
    console_socket: str = "",
    no_pivot: bool = False,
    no_new_keyring: bool = False,
) -> list[str]:
    args = ["create", "--bundle", bundle, "--pid-file", pid_file]
    if console_socket:
        args += ["--console-socket", console_socket]
    if no_pivot:
        args.append("--no-pivot")
    if no_new_keyring:
        args.append("--no-new-keyring")
    return [*args, container_id]


def exec_args(
    process_file: str, pid_file: str, container_id: str, console_socket: str = ""
) -> list[str]:
    args = ["exec", "--process", process_file, "--detach", "--pid-file", pid_file]
    if console_socket:
        args += ["--console-socket", console_socket]
    return [*args, container_id]


def kill_args(container_id: str, signal: int, all_processes: bool = False) -> list[str]:
    return ["kill", *(["--all"] if all_processes else []), container_id, str(signal)]


def checkpoint_args(
    container_id: str, image_path: str, work_path: str = "", leave_running: bool = False
) -> list[str]:
    args = ["checkpoint", "--image-path", image_path]
    if work_path:
        args += ["--work-path", work_path]
    if leave_running:
        args.append("--leave-running")
    return [*args, container_id]


def last_error(log_text: str) -> str:
    """The message of the last error-level entry of runc's JSON log, or ''."""
    for line in reversed(log_text.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", ""))
    return ""


def error_for(message: str) -> errdefs.ContainerdError:
    """Maps runc's message to the kind containerd's shim reports."""
    lowered = message.lower()
    if "does not exist" in lowered or "not found" in lowered:
        return errdefs.NotFound(message)
    if "already exists" in lowered:
        return errdefs.AlreadyExists(message)
    if "not running" in lowered or "not paused" in lowered or "is paused" in lowered:
        return errdefs.FailedPrecondition(message)
    return errdefs.Unknown(message)


class Runc:
    """Runs one container's runc commands; children are reaped by ``reaper``."""

    def __init__(self, config: RuncConfig, reaper: Reaper) -> None:
        self.config = config
        self.reaper = reaper

    async def run(
        self,
        args: Sequence[str],
        *,
        stdio: tuple[int, int, int] | None = None,
        input_bytes: bytes | None = None,
        capture: bool = False,
    ) -> bytes:
        """Runs ``runc <global flags> args``; returns stdout if ``capture``.

        Raises an errdefs kind with runc's message when it fails."""
        log = Path(self.config.log)
        try:
            offset = log.stat().st_size
        except FileNotFoundError:
            offset = 0
        # runc's errors are read from its JSON log, not its stderr.
        stdin, stdout, stderr = stdio or (subprocess.DEVNULL,) * 3
        try:
            code, output = await self.reaper.run(
                self.config.command(*args),
                stdin=stdin,
                stdout=subprocess.PIPE if capture else stdout,
                stderr=stderr,
                input_bytes=input_bytes,
            )
        except OSError as exc:
            raise errdefs.Unknown(f"{self.config.binary}: {exc.strerror}") from exc
        if code != 0:
            message = ""
            try:
                with log.open("rb") as f:
                    f.seek(offset)
                    message = last_error(f.read().decode(errors="replace"))
            except OSError:
                pass
            raise error_for(message or f"{self.config.binary} {args[0]} failed: exit status {code}")
        return output

    async def start(self, container_id: str) -> None:
        await self.run(["start", container_id])

    async def kill(self, container_id: str, signal: int, all_processes: bool = False) -> None:
        await self.run(kill_args(container_id, signal, all_processes))

    async def delete(self, container_id: str, force: bool = True) -> None:
        await self.run(["delete", *(["--force"] if force else []), container_id])

    async def pause(self, container_id: str) -> None:
        await self.run(["pause", container_id])

    async def resume(self, container_id: str) -> None:
        await self.run(["resume", container_id])

    async def ps(self, container_id: str) -> list[int]:
        out = await self.run(["ps", "--format", "json", container_id], capture=True)
        pids = json.loads(out or b"[]") or []
        return [int(p) for p in pids]

    async def update(self, container_id: str, resources_json: bytes) -> None:
        await self.run(["update", "--resources", "-", container_id], input_bytes=resources_json)

    async def state(self, container_id: str) -> dict[str, object]:
        out = await self.run(["state", container_id], capture=True)
        value = json.loads(out)
        return value if isinstance(value, dict) else {}
