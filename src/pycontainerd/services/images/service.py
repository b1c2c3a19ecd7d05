"""containerd.services.images.v1.Images over grpc.aio."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import empty_pb2

from pycontainerd._api.containerd.services.images.v1 import images_pb2 as pb
from pycontainerd._api.containerd.services.images.v1 import images_pb2_grpc as pb_grpc
from pycontainerd._api.containerd.types import descriptor_pb2
from pycontainerd.metadata.images import Descriptor, Image
from pycontainerd.services.images.local import ImagesLocal
from pycontainerd.services.timestamps import to_pb

Ctx = grpc.aio.ServicerContext[Any, Any]


def descriptor_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def descriptor_from_pb(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def image_to_pb(img: Image) -> pb.Image:
    return pb.Image(
        name=img.name,
        labels=dict(img.labels),
        target=descriptor_to_pb(img.target),
        created_at=to_pb(img.created_at),
        updated_at=to_pb(img.updated_at),
    )


def image_from_pb(img: pb.Image) -> Image:
    return Image(img.name, descriptor_from_pb(img.target), dict(img.labels))


class ImagesService(pb_grpc.ImagesServicer):
    def __init__(self, local: ImagesLocal) -> None:
        self._local = local

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ImagesServicer_to_server(self, server)

    async def Get(self, request: pb.GetImageRequest, context: Ctx) -> pb.GetImageResponse:
        return pb.GetImageResponse(image=image_to_pb(await self._local.get(request.name)))

    async def List(self, request: pb.ListImagesRequest, context: Ctx) -> pb.ListImagesResponse:
        found = await self._local.list(list(request.filters))
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in found])

    async def Create(self, request: pb.CreateImageRequest, context: Ctx) -> pb.CreateImageResponse:
        created = await self._local.create(image_from_pb(request.image))
        return pb.CreateImageResponse(image=image_to_pb(created))

    async def Update(self, request: pb.UpdateImageRequest, context: Ctx) -> pb.UpdateImageResponse:
        updated = await self._local.update(
            image_from_pb(request.image), list(request.update_mask.paths)
        )
        return pb.UpdateImageResponse(image=image_to_pb(updated))

    async def Delete(self, request: pb.DeleteImageRequest, context: Ctx) -> empty_pb2.Empty:
        target = request.target.digest if request.HasField("target") else None
        await self._local.delete(request.name, sync=request.sync, target=target)
        return empty_pb2.Empty()
