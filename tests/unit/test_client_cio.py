"""Client-side process IO: FIFO sets, copies to and from streams, log URIs."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from pycontainerd.client import cio
from pycontainerd.errdefs import InvalidArgument


def _is_fifo(path: str) -> bool:
    return stat.S_ISFIFO(os.stat(path).st_mode)


def test_fifo_set_names(tmp_path: Path) -> None:
    fifos = cio.new_fifo_set("c1", stdin=True, terminal=False, fifo_dir=tmp_path)
    cfg = fifos.config
    assert fifos.directory.parent == tmp_path
    assert [Path(p).name for p in (cfg.stdin, cfg.stdout, cfg.stderr)] == [
        "c1-stdin",
        "c1-stdout",
        "c1-stderr",
    ]
    assert all(_is_fifo(p) for p in (cfg.stdin, cfg.stdout, cfg.stderr))
    tty = cio.new_fifo_set("c2", stdin=False, terminal=True, fifo_dir=tmp_path).config
    assert tty.stdin == "" and tty.stderr == "" and tty.terminal and _is_fifo(tty.stdout)


def _shim_writes(path: str, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write)
    t.start()
    return t


async def test_output_copied_until_eof(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    pio = await cio.stdio(stdout=out, stderr=err, fifo_dir=tmp_path)("p")
    directory = Path(pio.config.stdout).parent
    writers = [
        _shim_writes(pio.config.stdout, b"hello " * 10000),
        _shim_writes(pio.config.stderr, b"oops\n"),
    ]
    await asyncio.wait_for(pio.wait(), 10)
    for w in writers:
        w.join()
    assert out.getvalue() == b"hello " * 10000 and err.getvalue() == b"oops\n"
    await pio.close()
    assert not directory.exists()


async def test_missing_streams_are_drained(tmp_path: Path) -> None:
    pio = await cio.stdio(fifo_dir=tmp_path)("p")
    assert pio.config.stdin == "" and pio.config.stdout and pio.config.stderr
    writers = [_shim_writes(pio.config.stdout, b"x"), _shim_writes(pio.config.stderr, b"y")]
    await asyncio.wait_for(pio.wait(), 10)
    for w in writers:
        w.join()
    await pio.close()


async def test_stdin_copied_then_closed(tmp_path: Path) -> None:
    out = io.BytesIO()
    pio = await cio.stdio(stdin=io.BytesIO(b"input\n"), stdout=out, fifo_dir=tmp_path)("p")
    assert pio.stdin_done is not None
    received: list[bytes] = []

    def shim_reads() -> None:
        with open(pio.config.stdin, "rb") as f:
            received.append(f.read())  # until the client closes its end

    reader = threading.Thread(target=shim_reads)
    reader.start()
    await asyncio.wait_for(pio.stdin_done, 10)
    reader.join(10)
    assert received == [b"input\n"]
    await pio.close()


async def test_close_without_a_shim_does_not_hang(tmp_path: Path) -> None:
    pio = await cio.stdio(stdin=io.BytesIO(b"never read"), stdout=io.BytesIO(), fifo_dir=tmp_path)(
        "p"
    )
    await asyncio.wait_for(pio.close(), 10)
    await asyncio.wait_for(pio.wait(), 10)
    await pio.close()  # twice is fine


async def test_null_and_log_uris(tmp_path: Path) -> None:
    assert (await cio.null_io()("p")).config == cio.IOConfig()
    cfg = (await cio.log_uri("/var/log/x.log")("p")).config
    assert cfg == cio.IOConfig("", "file:///var/log/x.log", "file:///var/log/x.log", False)
    cfg = (await cio.log_file(tmp_path / "f.log")("p")).config
    assert cfg.stdout == f"file://{tmp_path}/f.log"
    cfg = (await cio.binary_io("/usr/bin/logger", {"tag": "a b"})("p")).config
    assert cfg.stdout == "binary:///usr/bin/logger?tag=a+b"
    assert (await cio.log_uri("fifo:///run/x")("p")).config.stderr == "fifo:///run/x"
    with pytest.raises(InvalidArgument):
        cio.log_uri("relative/path")
    with pytest.raises(InvalidArgument):
        cio.log_uri("http://example.com/x")


def test_attachable_keeps_only_fifo_paths() -> None:
    cfg = cio.IOConfig("/f/in", "file:///log", "/f/err", True)
    assert cio.attachable(cfg) == cio.IOConfig("/f/in", "", "/f/err", True)


def test_fifo_open_cancelled_before_or_while_waiting(tmp_path: Path) -> None:
    from pycontainerd.client.cio import _FifoOpener

    path = str(tmp_path / "f")
    os.mkfifo(path)
    early = _FifoOpener(path, os.O_RDONLY)
    early.cancel()
    assert early.open() is None
    waiting = _FifoOpener(path, os.O_RDONLY)
    result: list[int | None] = []
    t = threading.Thread(target=lambda: result.append(waiting.open()))
    t.start()
    deadline = time.monotonic() + 10
    while waiting._state != "opening" and time.monotonic() < deadline:
        threading.Event().wait(0.001)  # until the thread is about to block in open()
    waiting.cancel()
    t.join(10)
    assert not t.is_alive() and result == [None]
    # an open that found its peer is not disturbed by a late cancel
    done = _FifoOpener(path, os.O_RDONLY | os.O_NONBLOCK)
    fd = done.open()
    assert fd is not None
    done.cancel()
    os.close(fd)
