"""Running a shim binary: ``start`` and ``delete`` (containerd's runtime/v2/binary.go).

The contract (containerd's runtime/v2/README.md): the daemon runs

    <shim> -namespace NS -address GRPC_SOCK -publish-binary DAEMON [-debug] -id ID start

in the bundle directory, with ``TTRPC_ADDRESS`` (where the shim forwards events),
``GRPC_ADDRESS``, ``MAX_SHIM_VERSION`` and ``NAMESPACE`` in its environment and the
runtime options (a protobuf ``Any``) on stdin. The shim starts (or finds, for grouped
tasks) a long-lived server and prints its address: plain text (``unix:///run/...``,
containerd 1.6) or JSON ``{"version": 2, "address": ..., "protocol": "ttrpc"}``
(1.7+). ``<shim> ... -id ID -bundle DIR delete`` cleans up after a shim that is gone
and prints a ``containerd.task.v2.DeleteResponse``.

The parsing here is pure; ``start``/``delete`` run the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import any_pb2, message

from pycontainerd._api.containerd.runtime.task.v2 import shim_pb2
from pycontainerd.errdefs import InvalidArgument, NotImplemented_, Unknown
from pycontainerd.runtime import Exit

logger = logging.getLogger(__name__)

MAX_SHIM_VERSION = 2
START_TIMEOUT = 60.0
DELETE_TIMEOUT = 30.0


def binary_name(runtime: str) -> str:
    """``io.containerd.runc.v2`` -> ``containerd-shim-runc-v2``; "" if it has no dots."""
    parts = runtime.split(".")
    if len(parts) < 2:
        return ""
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


@dataclass(frozen=True, slots=True)
class ShimAddress:
    """Where a started shim serves: a unix socket path, and the API it speaks."""

    path: str
    protocol: str = "ttrpc"
    version: int = 2


def _socket_path(address: str) -> str | None:
    path = address.removeprefix("unix://")
    if path.startswith("/") and "\x00" not in path and "\n" not in path:
        return path
    return None


def parse_address(text: str) -> ShimAddress:
    """Parse a shim's ``start`` output or its bundle ``address`` file.

    Raises:
        InvalidArgument: neither a unix address nor the JSON form; the message quotes
            what the shim printed.
        NotImplemented_: a protocol other than ttrpc or a version above 2.
    """
    stripped = text.strip()
    shown = stripped if len(stripped) <= 200 else stripped[:200] + "..."
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise InvalidArgument(f"shim printed malformed JSON {shown!r}: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            raise InvalidArgument(f"shim printed JSON without an address: {shown!r}")
        protocol = doc.get("protocol") or "ttrpc"
        version = doc.get("version") or 2
        if protocol != "ttrpc":
            raise NotImplemented_(f"shim protocol {protocol!r} (only ttrpc is supported)")
        if not isinstance(version, int) or version > MAX_SHIM_VERSION:
            raise NotImplemented_(f"shim API version {version!r} (at most 2 is supported)")
        path = _socket_path(doc["address"])
        if path is None:
            raise InvalidArgument(f"shim address {doc['address']!r} is not a unix socket")
        return ShimAddress(path, protocol, version)
    path = _socket_path(stripped)
    if path is None:
        raise InvalidArgument(
            f"shim printed {shown!r} instead of its address "
            '(expected unix:///path or {"version":2,"address":...,"protocol":"ttrpc"})'
        )
    return ShimAddress(path)


def parse_delete_output(data: bytes) -> Exit:
    """Decode a shim's ``delete`` output (a containerd.task.v2.DeleteResponse).

    Raises:
        InvalidArgument: the bytes are not that message.
    """
    try:
        resp = shim_pb2.DeleteResponse.FromString(data)
    except message.DecodeError as exc:
        raise InvalidArgument(f"shim delete printed an invalid response: {exc}") from exc
    ts = resp.exited_at.ToNanoseconds() if resp.HasField("exited_at") else 0
    return Exit(pid=resp.pid, status=resp.exit_status, timestamp_ns=ts)


@dataclass(frozen=True, slots=True)
class ShimBinary:
    """How to run one shim binary for one bundle (containerd's ``binary``)."""

    path: str
    id: str
    namespace: str
    bundle: Path
    address: str
    ttrpc_address: str
    publish_binary: str
    debug: bool = False
    extra_env: tuple[tuple[str, str], ...] = ()  # set for the shim by configuration

    def command(self, args: Sequence[str]) -> list[str]:
        return [
            self.path,
            "-namespace",
            self.namespace,
            "-address",
            self.address,
            "-publish-binary",
            self.publish_binary,
            *args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TTRPC_ADDRESS=self.ttrpc_address,
            GRPC_ADDRESS=self.address,
            MAX_SHIM_VERSION=str(MAX_SHIM_VERSION),
            NAMESPACE=self.namespace,
            GOMAXPROCS=env.get("GOMAXPROCS", "2"),
        )
        env.update(self.extra_env)
        return env

    async def _run(
        self, args: Sequence[str], stdin: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes, int]:
        """(exit status, stdout, stderr, the session id: the process's pid)."""
        proc = await asyncio.create_subprocess_exec(
            *self.command(args),
            cwd=self.bundle,
            env=self.environment(),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # The shim outlives this call and must not get our terminal's signals.
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate(stdin)
        except BaseException:
            # Also when it exited: a helper it left may hold the pipes open.
            _kill_session(proc.pid)
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out, err, proc.pid

    async def _run_in_zygote(self, args: Sequence[str]) -> tuple[int, bytes, bytes] | None:
        """Our own shim's ``start`` run by its warm fork server, when one is serving
        this state root: a fork instead of an interpreter start. None: run the binary.
        (Our shim's ``start`` does not read the options on stdin.)"""
        if not _is_our_shim(self.path):
            return None
        from pycontainerd.shim import address, zygote

        env = self.environment()
        root = address.state_root(str(self.bundle), env["MAX_SHIM_VERSION"])
        path = zygote.zygote_path(root)
        if not zygote.enabled() or not os.path.exists(path):
            return None
        argv = self.command(args)
        cwd = str(self.bundle)
        return await asyncio.to_thread(zygote.run_start, path, argv, env, cwd, START_TIMEOUT)

    async def start(self, options: any_pb2.Any | None) -> ShimAddress:
        """Run ``start`` and return the address the shim printed.

        Raises:
            Unknown: the shim failed (the message holds its output) or did not exit
                within START_TIMEOUT (it and its session are killed).
            InvalidArgument / NotImplemented_: see ``parse_address``.
        """
        args = ["-id", self.id]
        if self.debug:
            args.append("-debug")
        args.append("start")
        stdin = options.SerializeToString() if options is not None else None
        try:
            ran = await self._run_in_zygote(args)
            if ran is not None:
                code, out, err, session = *ran, 0
            else:
                code, out, err, session = await self._run(args, stdin, START_TIMEOUT)
        except TimeoutError:
            raise Unknown(
                f"{self.path} start: no address printed and no exit within "
                f"{START_TIMEOUT:g}s (killed)"
            ) from None
        # A failed start leaves nothing running: whatever it started in its session
        # goes (a real shim's server, too, since no task will use it).
        if code != 0:
            _kill_session(session)
            text = (err + out).decode(errors="replace").strip()
            raise Unknown(f"{self.path} start: {text or 'no output'}: exit status {code}")
        try:
            return parse_address(out.decode(errors="replace"))
        except (InvalidArgument, NotImplemented_) as exc:
            _kill_session(session)
            raise type(exc)(f"{self.path} start: {exc.message}") from exc

    async def delete(self) -> Exit:
        """Run ``delete`` for a shim that is gone: the shim binary kills and removes
        what the dead shim left (the runc container, the rootfs mounts).

        Raises:
            Unknown: the command failed; InvalidArgument: it printed garbage.
        """
        args = ["-id", self.id, "-bundle", str(self.bundle), "delete"]
        cwd_exists = self.bundle.is_dir()
        if not cwd_exists:
            raise Unknown(f"bundle {self.bundle} is gone: cannot run {self.path} delete")
        code, out, err, _ = await self._run(args, None, DELETE_TIMEOUT)
        if code != 0:
            text = err.decode(errors="replace").strip()
            raise Unknown(f"{self.path} delete: {text or 'no output'}: exit status {code}")
        if err.strip():
            logger.warning("shim %s delete: %s", self.id, err.decode(errors="replace").strip())
        return parse_delete_output(out)


OUR_SHIM = "containerd-shim-pyrunc-v2"


@functools.cache
def _is_our_shim(path: str) -> bool:
    """``path`` is the pyrunc shim installed with this daemon's interpreter."""
    ours = os.path.join(os.path.dirname(sys.executable), OUR_SHIM)
    try:
        return os.path.samefile(path, ours)
    except OSError:
        return False


def _kill_session(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (``start_new_session``); gone is fine.
    0 (a command the zygote ran, in no session of ours) kills nothing."""
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
