"""Introspection: what plugins this daemon has, and who the server is."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pycontainerd.errdefs import FailedPrecondition
from pycontainerd.plugin import Plugin, PluginSet
from pycontainerd.sansio import filters


@dataclass(frozen=True, slots=True)
class ServerInfo:
    uuid: str
    pid: int
    pidns: int


class IntrospectionLocal:
    def __init__(self, plugins: PluginSet, root: Path) -> None:
        self._plugins = plugins
        self._root = root
        self._uuid: str | None = None

    def plugins(self, filter_strings: list[str]) -> list[Plugin]:
        """Plugins in init order that match any of the filters (fields ``type``, ``id``).

        Raises:
            InvalidArgument: a filter does not parse.
        """
        flt = filters.parse_all(filter_strings)
        out = []
        for p in self._plugins:
            fields: dict[tuple[str, ...], str] = {
                ("type",): str(p.registration.type),
                ("id",): p.registration.id,
            }

            def field(
                path: tuple[str, ...], fields: dict[tuple[str, ...], str] = fields
            ) -> tuple[str, bool]:
                value = fields.get(path, "")
                return value, bool(value)

            if flt.match(field):
                out.append(p)
        return out

    def server(self) -> ServerInfo:
        """Raises FailedPrecondition if the persisted UUID is corrupt."""
        if self._uuid is None:
            self._uuid = self._load_uuid()
        try:
            pidns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            pidns = 0
        return ServerInfo(self._uuid, os.getpid(), pidns)

    def _load_uuid(self) -> str:
        path = self._root / "uuid"
        try:
            text = path.read_text()
        except FileNotFoundError:
            value = str(uuid.uuid4())
            self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(value)
            os.replace(tmp, path)
            return value
        try:
            return str(uuid.UUID(text.strip()))
        except ValueError as exc:
            raise FailedPrecondition(f"server uuid in {path} is corrupt: {text!r}") from exc
