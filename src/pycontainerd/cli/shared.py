"""What pyctr's command groups share: sizes and labels as ctr prints them, the
registry flags of pull, push and fetch, and their progress output."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import IO, Any


def human_size(n: float) -> str:
    """Sizes as ctr prints them (``progress.Bytes``): ``1.9 MiB``, ``422 B``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def add_registry_flags(parser: Any) -> None:
    parser.add_argument("--plain-http", action="store_true", help="allow plain HTTP")
    parser.add_argument("--hosts-dir", default="", help="hosts.toml configuration directory")
    parser.add_argument("--user", "-u", default="", help="user:password for the registry")
    parser.add_argument("--platform", action="append")


class _RichProgress:
    """Renders the registry client's ``progress(ref, status, offset, total)`` with rich.

    Called from the client's loop thread; rich's Progress is thread-safe.
    """

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def __call__(self, ref: str, status: str, offset: int, total: int) -> None:
        task = self._tasks.get(ref)
        if task is None:
            task = self._progress.add_task(ref, total=total or None, status=status)
            self._tasks[ref] = task
        done = status in ("done", "exists")
        self._progress.update(
            task,
            completed=total if done and total else offset,
            total=total or None,
            status=status,
        )


def registry_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "plain_http": args.plain_http,
        "hosts_dir": args.hosts_dir or None,
        "credentials": args.user or None,
    }


def _rich_progress() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}", style="bold"),
        TextColumn("{task.fields[status]}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


class _PlainProgress:
    """Progress for a log or a pipe: one plain line per blob as it starts and ends, no
    terminal escape sequences (rich's bars redraw in place, which only a TTY can show)."""

    FINAL = ("done", "exists")

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._said: dict[str, str] = {}

    def __call__(self, ref: str, status: str, offset: int, total: int) -> None:
        said = self._said.get(ref)
        if said == status or said in self.FINAL:
            return
        if status not in self.FINAL and said is not None:
            return  # "downloading" repeats with each chunk: say it once
        self._said[ref] = status
        size = f" ({human_size(total)})" if total and status in self.FINAL else ""
        print(f"{ref}: {status}{size}", file=self._out, flush=True)


@contextlib.contextmanager
def progress_reporter() -> Iterator[Any]:
    """A ``progress(ref, status, offset, total)`` callable for pull, push and fetch:
    rich bars on a terminal, plain lines on stderr otherwise."""
    if sys.stderr.isatty():
        with _rich_progress() as bars:
            yield _RichProgress(bars)
    else:
        yield _PlainProgress(sys.stderr)
