"""``pyctr tasks``: start, attach, exec, signal, pause, inspect and delete tasks (ctr 1.6)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from google.protobuf import any_pb2, json_format

from pycontainerd.cli.ctr_run import (
    io_creator,
    raw_terminal,
    resize_to_terminal,
    run_attached,
    table,
    write_pid_file,
)
from pycontainerd.client import Client
from pycontainerd.errdefs import ContainerdError, InvalidArgument
from pycontainerd.oci import spec as oci


def cmd_start(c: Client, args: argparse.Namespace) -> None:
    container = c.containers.get(args.id)
    terminal = bool(container.spec and container.spec.get("process", {}).get("terminal"))
    task = c.tasks.create(container, io_creator(args, terminal=terminal))
    if args.pid_file:
        write_pid_file(args.pid_file, task.pid)
    if args.detach:
        task.start()
        return
    try:
        code = run_attached(task, terminal=terminal)
    finally:
        task.delete(force=True)
    if code:
        raise SystemExit(code)


def cmd_attach(c: Client, args: argparse.Namespace) -> None:
    state = c.tasks.get(args.id).status()
    task = c.tasks.attach(
        args.id,
        stdin=sys.stdin.buffer,
        stdout=sys.stdout.buffer,
        stderr=None if state.terminal else sys.stderr.buffer,
    )
    with raw_terminal(state.terminal):
        if state.terminal:
            resize_to_terminal(task)
        status = task.wait()
    if status.code:
        raise SystemExit(status.code)


def cmd_exec(c: Client, args: argparse.Namespace) -> None:
    container = c.containers.get(args.id)
    if container.spec is None:
        raise InvalidArgument(f"container {args.id} has no spec")
    process = dict(container.spec.get("process") or {})
    process["args"] = list(args.args)
    process["terminal"] = args.tty
    if args.cwd:
        process["cwd"] = args.cwd
    if args.user:
        uid, gid = oci.resolve_user(args.user)
        process["user"] = {"uid": uid, "gid": gid}
    task = c.tasks.get(args.id)
    proc = task.exec(args.exec_id, process, io_creator(args, terminal=args.tty))
    if args.detach:
        proc.start()
        return
    try:
        code = run_attached(proc, terminal=args.tty)
    finally:
        proc.delete(force=True)
    if code:
        raise SystemExit(code)


def cmd_kill(c: Client, args: argparse.Namespace) -> None:
    if args.all and args.exec_id:
        raise InvalidArgument("specify an exec-id or all; not both")
    task = c.tasks.get(args.id)
    target = task.load_process(args.exec_id) if args.exec_id else task
    target.kill(args.signal, all=args.all)


def cmd_pause(c: Client, args: argparse.Namespace) -> None:
    c.tasks.get(args.id).pause()


def cmd_resume(c: Client, args: argparse.Namespace) -> None:
    c.tasks.get(args.id).resume()


def cmd_ps(c: Client, args: argparse.Namespace) -> None:
    pids = c.tasks.get(args.id).pids()
    if args.format == "json":
        print(json.dumps([{"pid": p.pid, "exec_id": p.exec_id} for p in pids]))
        return
    rows = [["PID", "INFO"]]
    rows += [
        [str(p.pid), f"&ProcessDetails{{ExecID:{p.exec_id},}}" if p.exec_id else "-"] for p in pids
    ]
    print(table(rows))


def cmd_list(c: Client, args: argparse.Namespace) -> None:
    found = c.tasks.list()
    if args.format == "json":
        print(json.dumps([{"id": t.id, "pid": t.pid, "status": t.status} for t in found]))
    elif args.quiet:
        for t in found:
            print(t.id)
    else:
        rows = [["TASK", "PID", "STATUS"]]
        rows += [[t.id, str(t.pid), t.status] for t in found]
        print(table(rows))


def cmd_delete(c: Client, args: argparse.Namespace) -> None:
    if args.exec_id and len(args.ids) > 1:
        raise InvalidArgument("specify an exec-id with one task only")
    failed: list[str] = []
    for tid in args.ids:
        try:
            task = c.tasks.get(tid)
            target = task.load_process(args.exec_id) if args.exec_id else task
            status = target.delete(force=args.force)
            if status.code:
                print(f"{tid}: exit status {status.code}", file=sys.stderr)
        except ContainerdError as exc:
            failed.append(f"{tid}: {exc}")
    if failed:
        raise ContainerdError("failed to delete " + "; ".join(failed))


def _cgroup_v1_rows(data: Any) -> list[list[str]]:
    """The METRIC/VALUE rows ctr prints for io.containerd.cgroups.v1.Metrics."""
    rows = [["METRIC", "VALUE"]]
    if data.HasField("memory"):
        rows += [
            ["memory.usage_in_bytes", str(data.memory.usage.usage)],
            ["memory.limit_in_bytes", str(data.memory.usage.limit)],
            ["memory.stat.cache", str(data.memory.total_cache)],
        ]
    if data.HasField("cpu"):
        rows += [
            ["cpuacct.usage", str(data.cpu.usage.total)],
            ["cpuacct.usage_percpu", "[" + " ".join(map(str, data.cpu.usage.per_cpu)) + "]"],
        ]
    if data.HasField("pids"):
        rows += [["pids.current", str(data.pids.current)], ["pids.limit", str(data.pids.limit)]]
    return rows


def cmd_metrics(c: Client, args: argparse.Namespace) -> None:
    # Registers io.containerd.cgroups.v1.Metrics so the Any decodes.
    from pycontainerd._api.containerd.cgroups.v1 import metrics_pb2

    metric = c.tasks.get(args.id).metrics()
    when = datetime.datetime.fromtimestamp(metric.timestamp_ns / 1e9, tz=datetime.UTC)
    if isinstance(metric.data, any_pb2.Any):  # a type this client has no proto for
        body: Any = {"type_url": metric.type_url, "size": len(metric.data.value)}
    else:
        body = json_format.MessageToDict(metric.data)
    if args.format == "json":
        print(json.dumps({"id": metric.id, "timestamp": when.isoformat(), "data": body}))
        return
    print(table([["ID", "TIMESTAMP"], [metric.id, str(when)]]))
    print()
    if isinstance(metric.data, metrics_pb2.Metrics):
        print(table(_cgroup_v1_rows(metric.data)))
    else:
        print(json.dumps(body, indent=2))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("tasks", aliases=["task", "t"], help="manage tasks")
    tsub = p.add_subparsers(dest="action", required=True)

    start = tsub.add_parser("start", help="start a container that has been created")
    start.add_argument("--null-io", action="store_true")
    start.add_argument("--log-uri", default="")
    start.add_argument("--fifo-dir", default="")
    start.add_argument("--pid-file", default="")
    start.add_argument("--detach", "-d", action="store_true")
    start.add_argument("id", metavar="CONTAINER")
    start.set_defaults(fn=cmd_start)

    attach = tsub.add_parser("attach", help="attach to the IO of a running container")
    attach.add_argument("id", metavar="CONTAINER")
    attach.set_defaults(fn=cmd_attach)

    exec_ = tsub.add_parser("exec", help="run an additional process in a task")
    exec_.add_argument("--cwd", default="")
    exec_.add_argument("--tty", "-t", action="store_true")
    exec_.add_argument("--detach", "-d", action="store_true")
    exec_.add_argument("--exec-id", required=True)
    exec_.add_argument("--fifo-dir", default="")
    exec_.add_argument("--log-uri", default="")
    exec_.add_argument("--user", default="", help="uid[:gid]")
    exec_.add_argument("id", metavar="CONTAINER")
    exec_.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    exec_.set_defaults(fn=cmd_exec)

    kill = tsub.add_parser("kill", help="signal a container (default: SIGTERM)")
    kill.add_argument("--signal", "-s", default="SIGTERM")
    kill.add_argument("--exec-id", default="")
    kill.add_argument("--all", "-a", action="store_true")
    kill.add_argument("id", metavar="CONTAINER")
    kill.set_defaults(fn=cmd_kill)

    for name, fn, text in (
        ("pause", cmd_pause, "pause an existing container"),
        ("resume", cmd_resume, "resume a paused container"),
    ):
        x = tsub.add_parser(name, help=text)
        x.add_argument("id", metavar="CONTAINER")
        x.set_defaults(fn=fn)

    ps = tsub.add_parser("ps", help="list processes for container")
    ps.add_argument("--format", choices=["table", "json"], default="table")
    ps.add_argument("id", metavar="CONTAINER")
    ps.set_defaults(fn=cmd_ps)

    ls = tsub.add_parser("list", aliases=["ls"], help="list tasks")
    ls.add_argument("--quiet", "-q", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(fn=cmd_list)

    rm = tsub.add_parser("delete", aliases=["del", "remove", "rm"], help="delete tasks")
    rm.add_argument("--force", "-f", action="store_true", help="kill the task first")
    rm.add_argument("--exec-id", default="")
    rm.add_argument("ids", nargs="+", metavar="CONTAINER")
    rm.set_defaults(fn=cmd_delete)

    metrics = tsub.add_parser("metrics", aliases=["metric"], help="one sample of task metrics")
    metrics.add_argument("--format", choices=["table", "json"], default="table")
    metrics.add_argument("id", metavar="CONTAINER")
    metrics.set_defaults(fn=cmd_metrics)
