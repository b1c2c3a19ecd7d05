"""Start a daemon (ours or containerd) in a private root and know when it is ready.

Used by the tests, the demo and the benchmarks. Readiness is the daemon's own
``READY=1`` on ``NOTIFY_SOCKET`` (both pycontainerd and containerd send it), waited for
together with the process's exit through a pidfd, so there is no polling and a daemon
that dies at start-up is reported at once with its log.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class DaemonError(RuntimeError):
    pass


@dataclass
class Daemon:
    """A running daemon: its socket, directories and process."""

    address: Path
    root: Path
    state: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it to exit; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise DaemonError(f"daemon did not stop within {timeout}s\n{self.log()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def pycontainerd_argv(root: Path, state: Path, address: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pycontainerd.cli.daemon",
        "--root",
        str(root),
        "--state",
        str(state),
        "--address",
        str(address),
        *extra,
    ]


def start(
    argv: Sequence[str],
    *,
    address: Path,
    root: Path,
    state: Path,
    log_path: Path,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    preexec: Sequence[str] = (),
) -> Daemon:
    """Start ``argv`` and wait for READY=1.

    ``preexec`` prefixes the command (``unshare -m ...`` for containerd). Raises
    DaemonError with the daemon's log if it exits or is not ready within ``timeout``.
    """
    notify_dir = Path(tempfile.mkdtemp(prefix="notify-"))
    notify_path = notify_dir / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(notify_path))
        full_env = dict(os.environ if env is None else env)
        full_env["NOTIFY_SOCKET"] = str(notify_path)
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [*preexec, *argv],
                env=full_env,
                stdout=log_file,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log_file.close()
        daemon = Daemon(address, root, state, log_path, proc, list(argv))
        pidfd = os.pidfd_open(proc.pid)
        try:
            _wait_ready(sock, pidfd, daemon, timeout)
        except BaseException:
            daemon.kill()
            raise
        finally:
            os.close(pidfd)
        return daemon
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            notify_path.unlink()
            notify_dir.rmdir()


def _wait_ready(sock: socket.socket, pidfd: int, daemon: Daemon, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DaemonError(f"daemon not ready within {timeout}s\n{daemon.log()}")
        readable, _, _ = select.select([sock.fileno(), pidfd], [], [], remaining)
        if pidfd in readable:
            daemon.proc.wait()
            raise DaemonError(
                f"daemon exited with status {daemon.proc.returncode} during start-up\n"
                f"{daemon.log()}"
            )
        if sock.fileno() in readable:
            msg = sock.recv(4096).decode(errors="replace")
            if "READY=1" in msg.split("\n"):
                return


@contextlib.contextmanager
def pycontainerd(
    base: Path, *extra_args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[Daemon]:
    """Run pycontainerd under ``base`` (root, state, socket, log) for a ``with`` block."""
    root, state = base / "root", base / "state"
    address = base / "c.sock"
    daemon = start(
        pycontainerd_argv(root, state, address, *extra_args),
        address=address,
        root=root,
        state=state,
        log_path=base / "daemon.log",
        env=env,
        timeout=timeout,
    )
    try:
        yield daemon
    finally:
        daemon.stop()


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every process that is still there when read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")


def parent_pid(pid: int) -> int:
    """Raises OSError when the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def shim_pids(
    address: str | os.PathLike[str], container_id: str | None = None, program: str = ""
) -> list[int]:
    """Shim processes started for the daemon at ``address`` (their argv has
    ``-address ADDRESS``), of ``program`` when given (its name in the first two words);
    with ``container_id``, only those whose argv names it (a pooled shim names its
    first container only)."""
    wanted = os.fspath(address).encode()
    found = []
    for pid, argv in command_lines():
        if b"-address" not in argv:
            continue
        i = argv.index(b"-address")
        if i + 1 >= len(argv) or argv[i + 1] != wanted:
            continue
        if program and not any(program.encode() in word for word in argv[:2]):
            continue
        if container_id is None or container_id.encode() in argv:
            found.append(pid)
    return found
