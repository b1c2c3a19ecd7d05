"""``pyctr run``: create a container from an image, start its task, wait for it.

Mirrors Debian ctr 1.6's ``ctr run [flags] IMAGE ID [COMMAND] [ARG...]``: the container's
exit code becomes pyctr's; ``--rm`` removes the container and its snapshot afterwards;
``-d`` leaves the task running. The container flags are shared with ``containers
create``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import termios
import tty as ttymod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from pycontainerd._api.containerd.types.runc.options import oci_pb2 as runc_options
from pycontainerd.client import Client, cio
from pycontainerd.client.containers import (
    DEFAULT_RUNTIME,
    DEFAULT_SNAPSHOTTER,
    Container,
    ImageConfig,
)
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.oci import spec as oci


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded as ctr's tabwriter does (four spaces between columns)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` items (a bare ``key`` has an empty value, as ctr's LabelArgs)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value
    return out


def parse_mount(value: str) -> dict[str, Any]:
    """``type=bind,src=/tmp,dst=/host,options=rbind:ro`` to an OCI mount.

    Raises InvalidArgument without a destination or with an unknown key.
    """
    mount: dict[str, Any] = {"type": "", "source": "", "destination": "", "options": []}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if not sep:
            raise InvalidArgument(f"mount {value!r}: {part!r} is not key=value")
        if key == "type":
            mount["type"] = val
        elif key in ("source", "src"):
            mount["source"] = val
        elif key in ("destination", "dst"):
            mount["destination"] = val
        elif key == "options":
            mount["options"] = [o for o in val.split(":") if o]
        else:
            raise InvalidArgument(f"mount {value!r}: unknown key {key!r}")
    if not mount["destination"]:
        raise InvalidArgument(f"mount {value!r}: no destination (dst=)")
    return mount


def add_container_flags(p: argparse.ArgumentParser) -> None:
    """The flags ``run`` and ``containers create`` share (ctr 1.6's names)."""
    p.add_argument("--snapshotter", default=os.environ.get("CONTAINERD_SNAPSHOTTER") or "")
    p.add_argument("--snapshotter-label", action="append", default=[])
    p.add_argument("--cwd", default="", help="working directory of the process")
    p.add_argument("--env", action="append", default=[], help="FOO=bar")
    p.add_argument("--env-file", default="", help="a file of FOO=bar lines")
    p.add_argument("--label", action="append", default=[], help="container label key=value")
    p.add_argument("--annotation", action="append", default=[], help="OCI annotation key=value")
    p.add_argument("--mount", action="append", default=[], help="type=bind,src=..,dst=..")
    p.add_argument("--net-host", action="store_true", help="use the host's network")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--read-only", action="store_true", help="a read-only rootfs")
    p.add_argument("--runtime", default=DEFAULT_RUNTIME)
    p.add_argument("--runc-binary", default="", help="runc-compatible binary (runc.v2 only)")
    p.add_argument("--runc-root", default="", help="runc-compatible root (runc.v2 only)")
    p.add_argument("--runc-systemd-cgroup", action="store_true")
    p.add_argument("--tty", "-t", action="store_true", help="allocate a TTY")
    p.add_argument("--user", "-u", default="", help="uid[:gid] or name[:group]")
    p.add_argument("--hostname", default="")
    p.add_argument("--cgroup", default=None, help="cgroup path ('' for none)")
    p.add_argument("--memory-limit", type=int, default=0)
    p.add_argument("--cpus", type=float, default=0.0)
    p.add_argument("--allow-new-privs", action="store_true")
    p.add_argument("--cap-add", action="append", default=[])
    p.add_argument("--cap-drop", action="append", default=[])
    p.add_argument("--platform", default="linux/amd64")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("id", metavar="ID")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def spec_opts(args: argparse.Namespace) -> list[oci.SpecOpt]:
    """The spec options the container flags ask for, in ctr's order."""
    opts: list[oci.SpecOpt] = [oci.with_default_unix_devices]
    env: list[str] = []
    if args.env_file:
        for line in Path(args.env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                env.append(line.strip())
    env += args.env
    if env:
        opts.append(oci.with_env(env))
    if args.mount:
        opts.append(oci.with_mounts([parse_mount(m) for m in args.mount]))
    if args.annotation:
        opts.append(oci.with_annotations(parse_labels(args.annotation)))
    if args.label:
        # ctr puts the container's labels in the spec's annotations too
        opts.append(oci.with_annotations(parse_labels(args.label)))
    if args.tty:
        opts.append(oci.with_tty)
    if args.net_host:
        opts += [oci.with_host_network, oci.with_env([f"HOSTNAME={socket.gethostname()}"])]
    if args.privileged:
        opts += [oci.with_privileged, oci.with_all_devices_allowed, oci.with_host_devices]
    if args.read_only:
        opts.append(oci.with_rootfs_readonly)
    if args.cwd:
        opts.append(oci.with_process_cwd(args.cwd))
    if args.user and not _names_user(args.user):
        opts.append(oci.with_user(args.user))
    if args.hostname:
        opts.append(oci.with_hostname(args.hostname))
    if args.cgroup is not None:
        opts.append(oci.with_cgroup(args.cgroup))
    if args.memory_limit:
        opts.append(oci.with_memory_limit(args.memory_limit))
    if args.cpus:
        opts.append(oci.with_cpus(args.cpus))
    if args.allow_new_privs:
        opts.append(_allow_new_privs)
    if args.cap_add or args.cap_drop:
        opts.append(_adjust_caps(args.cap_add, args.cap_drop))
    return opts


def _allow_new_privs(spec: oci.Spec) -> None:
    spec.setdefault("process", {})["noNewPrivileges"] = False


def _adjust_caps(add: Sequence[str], drop: Sequence[str]) -> oci.SpecOpt:
    def opt(spec: oci.Spec) -> None:
        caps = spec.setdefault("process", {}).setdefault("capabilities", {})
        for kind in ("bounding", "effective", "permitted"):
            current = [c for c in caps.get(kind, []) if c not in drop]
            caps[kind] = current + [c for c in add if c not in current]

    return opt


def _names_user(user: str) -> bool:
    return any(part and not part.isdigit() for part in user.split(":"))


STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"


def container_labels(image: ImageConfig, cmd_labels: dict[str, str]) -> dict[str, str]:
    """ctr's container labels: the image config's, the image record's, the command
    line's (each overriding the last), and the image's stop signal."""
    config = image.config.get("config") or {}
    labels = {**(config.get("Labels") or {}), **image.labels, **cmd_labels}
    labels[STOP_SIGNAL_LABEL] = config.get("StopSignal") or "SIGTERM"
    return labels


def runtime_options(args: argparse.Namespace) -> any_pb2.Any | None:
    """What ctr sends for the runc v2 runtime: its Options, empty unless flags set
    them. Raises InvalidArgument for runc flags with another runtime."""
    if args.runtime != DEFAULT_RUNTIME:
        if args.runc_binary or args.runc_systemd_cgroup:
            raise InvalidArgument(
                f"--runc-binary and --runc-systemd-cgroup need runtime {DEFAULT_RUNTIME}"
            )
        return None
    options = runc_options.Options(
        binary_name=args.runc_binary, root=args.runc_root, systemd_cgroup=args.runc_systemd_cgroup
    )
    return any_pb2.Any(type_url=options.DESCRIPTOR.full_name, value=options.SerializeToString())


def create_container(c: Client, args: argparse.Namespace) -> Container:
    """The container the flags describe, its snapshot prepared from the image."""
    opts = spec_opts(args)
    image: ImageConfig = c.containers.image_config(args.image, args.platform)
    if args.user and _names_user(args.user):
        # names resolve in the image's /etc/passwd and /etc/group
        opts.append(oci.with_user(args.user, c.containers.image_user_db(image)))
    container: Container = c.new_container(
        args.id,
        args.image,
        *opts,
        args=list(args.args),
        snapshotter=args.snapshotter or DEFAULT_SNAPSHOTTER,
        readonly_rootfs=False,
        runtime=args.runtime,
        runtime_options=runtime_options(args),
        labels=container_labels(image, parse_labels(args.label)),
        snapshot_labels=parse_labels(args.snapshotter_label),
    )
    return container


def io_creator(args: argparse.Namespace, *, terminal: bool, with_stdin: bool = True) -> cio.Creator:
    """The task IO the flags ask for: none, a log URI, or this process's stdio."""
    if getattr(args, "null_io", False):
        return cio.null_io()
    if getattr(args, "log_uri", ""):
        return cio.log_uri(args.log_uri)
    return cio.stdio(
        stdin=sys.stdin.buffer if with_stdin else None,
        stdout=sys.stdout.buffer,
        stderr=None if terminal else sys.stderr.buffer,
        terminal=terminal,
        fifo_dir=getattr(args, "fifo_dir", None) or None,
    )


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """The caller's terminal in raw mode while a container owns it."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    ttymod.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def forward_signals(process: Any, enabled: bool) -> Iterator[None]:
    """Signals pyctr receives go to the process (ctr's ForwardAllSignals), for the
    ones a person sends to a foreground command."""
    if not enabled:
        yield
        return
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):  # the process may have just exited
            process.kill(signum)

    previous = {s: signal.signal(s, handler) for s in forwarded}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def resize_to_terminal(process: Any) -> None:
    if sys.stdout.isatty():
        size = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            process.resize(size.columns, size.lines)


def run_attached(process: Any, *, terminal: bool) -> int:
    """Start a created process, wait for it with stdio attached; its exit code."""
    with raw_terminal(terminal), forward_signals(process, not terminal):
        process.start()
        if terminal:
            resize_to_terminal(process)
        status = process.wait()
    code: int = status.code
    return code


def write_pid_file(path: str, pid: int) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(str(pid))
    tmp.rename(path)


def cmd_run(c: Client, args: argparse.Namespace) -> None:
    if args.rm and args.detach:
        raise InvalidArgument("flags --detach and --rm cannot be specified together")
    container = create_container(c, args)
    code = 0
    try:
        task = c.tasks.create(container, io_creator(args, terminal=args.tty))
        if args.pid_file:
            write_pid_file(args.pid_file, task.pid)
        if args.detach:
            task.start()
            return
        try:
            code = run_attached(task, terminal=args.tty)
        finally:
            task.delete(force=True)
    finally:
        if args.rm:
            c.containers.delete(container.id, cleanup_snapshot=True)
    if code:
        raise SystemExit(code)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("run", help="run a container")
    p.add_argument("--rm", action="store_true", help="remove the container after running")
    p.add_argument("--null-io", action="store_true", help="send all IO to /dev/null")
    p.add_argument("--log-uri", default="", help="log URI (binary://, file://, fifo://)")
    p.add_argument("--detach", "-d", action="store_true", help="do not wait for the task")
    p.add_argument("--fifo-dir", default="", help="directory for the IO FIFOs")
    p.add_argument("--pid-file", default="", help="write the task's pid here")
    add_container_flags(p)
    p.set_defaults(fn=cmd_run)
