"""The shim's ``delete`` command: clean up after a shim that is gone.

containerd 1.6 runs it after every shim disconnects, and ``ctr run --rm`` waits for
it, so it imports nothing heavy: the DeleteResponse is encoded by hand (three fields),
runc is spawned directly, and the mount code is loaded only if the rootfs is still
mounted.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from pycontainerd.shim.address import ADDRESS_FILE, Flags, socket_alive, socket_path

OPTIONS_FILE = "options.json"
DEFAULT_RUNC_ROOT = "/run/containerd/runc"
SIGKILL_EXIT_STATUS = 128 + 9


def read_options(bundle: str) -> dict[str, object]:
    """The runc options the shim saved at Create (containerd's JSON names), or {}."""
    try:
        with open(os.path.join(bundle, OPTIONS_FILE), "rb") as f:
            data = f.read()
    except OSError:
        return {}
    import json

    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_delete_response(pid: int, exit_status: int, exited_at_ns: int) -> bytes:
    """``containerd.task.v2.DeleteResponse{pid, exit_status, exited_at}`` in protobuf."""
    seconds, nanos = divmod(exited_at_ns, 1_000_000_000)
    timestamp = b""
    if seconds:
        timestamp += b"\x08" + _varint(seconds)
    if nanos:
        timestamp += b"\x10" + _varint(nanos)
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    return out + b"\x1a" + _varint(len(timestamp)) + timestamp


def _remove_dead_socket(bundle: str) -> None:
    """The socket of the shim that served the bundle, which died without removing it;
    not while a live shim serves there (a pooled or grouped shim's other containers)."""
    try:
        with open(os.path.join(bundle, ADDRESS_FILE)) as f:
            path = socket_path(f.read().strip())
        if path and stat.S_ISSOCK(os.lstat(path).st_mode) and not socket_alive(path):
            os.unlink(path)
    except OSError:
        pass


def delete(flags: Flags, bundle: str) -> int:
    """``runc delete --force``, unmount the rootfs, print a DeleteResponse (137, now)."""
    options = read_options(bundle)
    binary = str(options.get("binary_name") or "runc")
    root = str(options.get("root") or f"{DEFAULT_RUNC_ROOT}/{flags.namespace}")
    argv = [binary, "--root", root, "--log", os.path.join(bundle, "log.json"),
            "--log-format", "json"]  # fmt: skip
    if options.get("systemd_cgroup"):
        argv.append("--systemd-cgroup")
    argv += ["delete", "--force", flags.id]
    try:
        pid = os.posix_spawnp(
            binary,
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)],
        )
        os.waitpid(pid, 0)
    except OSError as exc:  # no runc: nothing of ours can be left to delete
        print(f"{binary} delete: {exc}", file=sys.stderr)
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.ismount(rootfs):
        from pycontainerd.snapshots.mount import unmount_all

        try:
            unmount_all(rootfs)
        except OSError as exc:
            print(f"unmount rootfs: {exc}", file=sys.stderr)
    _remove_dead_socket(bundle)
    sys.stdout.buffer.write(encode_delete_response(0, SIGKILL_EXIT_STATUS, time.time_ns()))
    sys.stdout.flush()
    return 0
