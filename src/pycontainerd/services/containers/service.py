"""containerd.services.containers.v1.Containers over grpc.aio."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from pycontainerd._api.containerd.services.containers.v1 import containers_pb2 as pb
from pycontainerd._api.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc
from pycontainerd.metadata.containers import Container, RuntimeInfo, TypedValue
from pycontainerd.services.containers.local import ContainersLocal, any_to_pb

Ctx = grpc.aio.ServicerContext[Any, Any]


def _time_to_pb(when: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _any_from_pb(value: any_pb2.Any) -> TypedValue:
    return TypedValue(value.type_url, value.value)


def container_to_pb(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        labels=c.labels,
        image=c.image,
        runtime=pb.Container.Runtime(name=c.runtime.name, options=any_to_pb(c.runtime.options)),
        spec=any_to_pb(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=_time_to_pb(c.created_at),
        updated_at=_time_to_pb(c.updated_at),
        extensions={
            k: any_pb2.Any(type_url=v.type_url, value=v.value) for k, v in c.extensions.items()
        },
        sandbox=c.sandbox,
    )


def container_from_pb(c: pb.Container) -> Container:
    runtime = c.runtime
    return Container(
        id=c.id,
        runtime=RuntimeInfo(
            runtime.name,
            _any_from_pb(runtime.options) if runtime.HasField("options") else None,
        ),
        spec=_any_from_pb(c.spec) if c.HasField("spec") else None,
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: _any_from_pb(v) for k, v in c.extensions.items()},
        sandbox=c.sandbox,
    )


class ContainersService(pb_grpc.ContainersServicer):
    def __init__(self, local: ContainersLocal) -> None:
        self._local = local

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ContainersServicer_to_server(self, server)

    async def Get(self, request: pb.GetContainerRequest, context: Ctx) -> pb.GetContainerResponse:
        return pb.GetContainerResponse(container=container_to_pb(await self._local.get(request.id)))

    async def List(
        self, request: pb.ListContainersRequest, context: Ctx
    ) -> pb.ListContainersResponse:
        found = await self._local.list(list(request.filters))
        return pb.ListContainersResponse(containers=[container_to_pb(c) for c in found])

    async def ListStream(
        self, request: pb.ListContainersRequest, context: Ctx
    ) -> AsyncIterator[pb.ListContainerMessage]:
        for c in await self._local.list(list(request.filters)):
            yield pb.ListContainerMessage(container=container_to_pb(c))

    async def Create(
        self, request: pb.CreateContainerRequest, context: Ctx
    ) -> pb.CreateContainerResponse:
        created = await self._local.create(container_from_pb(request.container))
        return pb.CreateContainerResponse(container=container_to_pb(created))

    async def Update(
        self, request: pb.UpdateContainerRequest, context: Ctx
    ) -> pb.UpdateContainerResponse:
        updated = await self._local.update(
            container_from_pb(request.container), list(request.update_mask.paths)
        )
        return pb.UpdateContainerResponse(container=container_to_pb(updated))

    async def Delete(self, request: pb.DeleteContainerRequest, context: Ctx) -> empty_pb2.Empty:
        await self._local.delete(request.id)
        return empty_pb2.Empty()
