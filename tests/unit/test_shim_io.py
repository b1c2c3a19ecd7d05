"""Stdio targets and the FIFO semantics the container gets."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pycontainerd import errdefs
from pycontainerd.shim.io import StdioTarget, open_io, parse_target
from pycontainerd.shim.reaper import Reaper


def test_parse_target() -> None:
    assert parse_target("") == StdioTarget("null")
    assert parse_target("/run/x/stdout") == StdioTarget("fifo", "/run/x/stdout")
    assert parse_target("fifo:///run/x") == StdioTarget("fifo", "/run/x")
    assert parse_target("file:///var/log/a%20b.log") == StdioTarget("file", "/var/log/a b.log")
    assert parse_target("binary:///usr/bin/logger?tag=web&debug=") == StdioTarget(
        "binary", "/usr/bin/logger", ("tag", "web", "debug")
    )
    with pytest.raises(errdefs.InvalidArgument):
        parse_target("tcp://host:1")


async def test_fifos_no_epipe_and_stdin_eof_only_after_close(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("in", "out", "err")]
    for path in paths:
        os.mkfifo(path)
    io = await open_io(*map(str, paths), namespace="ns", container_id="c", reaper=Reaper())
    try:
        # No client reads stdout yet: writing must not fail with EPIPE.
        assert os.write(io.stdout, b"x") == 1
        # No client writer yet: stdin is not at EOF while the shim holds its keeper.
        os.set_blocking(io.stdin, False)
        with pytest.raises(BlockingIOError):
            os.read(io.stdin, 1)
        io.close_stdin()
        assert os.read(io.stdin, 1) == b""
    finally:
        io.close()


async def test_file_uri_appends_both_streams(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "log"
    io = await open_io("", f"file://{log}", f"file://{log}", namespace="n", container_id="c",
                       reaper=Reaper())  # fmt: skip
    try:
        assert io.stdout == io.stderr
        os.write(io.stdout, b"a\n")
    finally:
        io.close()
    assert log.read_bytes() == b"a\n"


async def test_binary_logger_gets_fds_and_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    logger = tmp_path / "logger"
    logger.write_text(
        f'#!/bin/sh\necho "$CONTAINER_NAMESPACE $CONTAINER_ID $*" > {out}.env\n'
        f"exec 5>&-\ncat <&3 > {out}\n"
    )
    logger.chmod(0o755)
    reaper = Reaper()
    loop = asyncio.get_running_loop()
    reaper.install(loop)
    try:
        io = await open_io("", f"binary://{logger}?a=b", "", namespace="n", container_id="c",
                           reaper=reaper)  # fmt: skip
        os.write(io.stdout, b"hello")
        io.close()
        assert (tmp_path / "out.env").read_text() == "n c a b\n"
    finally:
        import signal

        loop.remove_signal_handler(signal.SIGCHLD)
