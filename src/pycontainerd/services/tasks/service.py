"""containerd.services.tasks.v1.Tasks over grpc.aio: one line per RPC."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2 as pb
from pycontainerd._api.containerd.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from pycontainerd.services.tasks.local import TasksLocal

Ctx = grpc.aio.ServicerContext[Any, Any]


class TasksService(pb_grpc.TasksServicer):
    def __init__(self, local: TasksLocal) -> None:
        self._local = local

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_TasksServicer_to_server(self, server)

    async def Create(self, request: pb.CreateTaskRequest, context: Ctx) -> pb.CreateTaskResponse:
        return await self._local.Create(request)

    async def Start(self, request: pb.StartRequest, context: Ctx) -> pb.StartResponse:
        return await self._local.Start(request)

    async def Delete(self, request: pb.DeleteTaskRequest, context: Ctx) -> pb.DeleteResponse:
        return await self._local.Delete(request)

    async def DeleteProcess(
        self, request: pb.DeleteProcessRequest, context: Ctx
    ) -> pb.DeleteResponse:
        return await self._local.DeleteProcess(request)

    async def Get(self, request: pb.GetRequest, context: Ctx) -> pb.GetResponse:
        return await self._local.Get(request)

    async def List(self, request: pb.ListTasksRequest, context: Ctx) -> pb.ListTasksResponse:
        return await self._local.List(request)

    async def Kill(self, request: pb.KillRequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.Kill(request)

    async def Exec(self, request: pb.ExecProcessRequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.Exec(request)

    async def ResizePty(self, request: pb.ResizePtyRequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.ResizePty(request)

    async def CloseIO(self, request: pb.CloseIORequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.CloseIO(request)

    async def Pause(self, request: pb.PauseTaskRequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.Pause(request)

    async def Resume(self, request: pb.ResumeTaskRequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.Resume(request)

    async def ListPids(self, request: pb.ListPidsRequest, context: Ctx) -> pb.ListPidsResponse:
        return await self._local.ListPids(request)

    async def Checkpoint(
        self, request: pb.CheckpointTaskRequest, context: Ctx
    ) -> pb.CheckpointTaskResponse:
        return await self._local.Checkpoint(request)

    async def Update(self, request: pb.UpdateTaskRequest, context: Ctx) -> empty_pb2.Empty:
        return await self._local.Update(request)

    async def Metrics(self, request: pb.MetricsRequest, context: Ctx) -> pb.MetricsResponse:
        return await self._local.Metrics(request)

    async def Wait(self, request: pb.WaitRequest, context: Ctx) -> pb.WaitResponse:
        return await self._local.Wait(request)
