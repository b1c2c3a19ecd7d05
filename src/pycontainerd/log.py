"""Daemon logging in containerd's two formats: logrus-style text, or JSON lines."""

from __future__ import annotations

import datetime
import json
import logging
import sys

from pycontainerd.errdefs import InvalidArgument

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _quote(s: str) -> str:
    if s and all(c.isalnum() or c in "-._/:@" for c in s):
        return s
    return json.dumps(s)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = _NAMES.get(record.levelno, "info")
        line = f"time={_quote(_timestamp(record))} level={level} msg={_quote(record.getMessage())}"
        if record.exc_info:
            line += f" error={_quote(self.formatException(record.exc_info))}"
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "level": _NAMES.get(record.levelno, "info"),
            "msg": record.getMessage(),
            "time": _timestamp(record),
            "logger": record.name,
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger. Raises InvalidArgument for unknown levels or formats."""
    lvl = LEVELS.get((level or "info").lower())
    if lvl is None:
        raise InvalidArgument(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}")
    fmt = (fmt or "text").lower()
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JSONFormatter()
    else:
        raise InvalidArgument(f"unknown log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # grpc's own debug chatter is not ours to show at our debug level
    logging.getLogger("grpc").setLevel(max(lvl, logging.WARNING))
