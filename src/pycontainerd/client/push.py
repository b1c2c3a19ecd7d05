"""``client.push``: send an image from the daemon's content store to a registry.

Children go before their parents (blobs, then manifests, then the index), as a registry
requires. Blobs the registry has are skipped, blobs pulled from another repository on the
same registry are cross-mounted (``containerd.io/distribution.source.<host>`` label).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from pycontainerd.client.pull import INDEX_TYPES, MANIFEST_TYPES, Progress, make_matcher, ref_key
from pycontainerd.client.types import Descriptor
from pycontainerd.errdefs import InvalidArgument, NotFound
from pycontainerd.images.platforms import Matcher, Platform
from pycontainerd.remotes.auth import Credentials
from pycontainerd.remotes.pusher import push_blob, push_manifest
from pycontainerd.remotes.reference import parse_reference
from pycontainerd.remotes.resolver import RegistrySession

if TYPE_CHECKING:
    from pycontainerd.client.aio import AsyncClient

MAX_INDEX_DEPTH = 8


async def push(
    client: AsyncClient,
    ref: str,
    image: str | Descriptor | None = None,
    *,
    platform: str | Platform | Matcher | None = None,
    progress: Progress | None = None,
    hosts_dir: str | Path | None = None,
    plain_http: bool = False,
    credentials: Credentials | str | None = None,
) -> Descriptor:
    """Push ``image`` (an image name or root descriptor; default: the image named ``ref``).

    ``platform`` limits an index's manifests to those matching (the index is pushed as is).

    Returns:
        The root descriptor pushed.
    Raises:
        InvalidArgument: a malformed reference, or a digest reference (push needs a tag).
        NotFound: the image, or a blob it needs, is not in the content store.
        FailedPrecondition: the registry refused the credentials.
        Unavailable: the registry kept failing after retries.
    """
    parsed = parse_reference(ref)
    if parsed.digest and not parsed.tag:
        raise InvalidArgument(f"{ref}: push needs a tag, not a digest")
    if image is None:
        image = ref
    if isinstance(image, str):
        try:
            root = (await client.images.get(image)).target
        except NotFound:
            root = (await client.images.get(str(parse_reference(image)))).target
    else:
        root = image
    matcher = make_matcher(platform) if platform is not None else None

    def report(desc: Descriptor, status: str) -> None:
        if progress is not None:
            progress(ref_key(desc), status, desc.size if status != "uploading" else 0, desc.size)

    async with RegistrySession(
        parsed, hosts_dir=hosts_dir, plain_http=plain_http, credentials=credentials
    ) as session:
        seen: set[str] = set()

        async def walk(desc: Descriptor, depth: int, tag: str) -> None:
            if desc.digest in seen:
                return
            seen.add(desc.digest)
            if depth > MAX_INDEX_DEPTH:
                raise InvalidArgument(f"{desc.digest}: index nests deeper than {MAX_INDEX_DEPTH}")
            report(desc, "uploading")
            if desc.media_type in INDEX_TYPES | MANIFEST_TYPES:
                data = await client.content.read_all(desc.digest)
                doc = json.loads(data)
                if desc.media_type in INDEX_TYPES:
                    for entry in doc.get("manifests") or []:
                        child = Descriptor.from_json(entry)
                        p = child.platform
                        if (
                            matcher is not None
                            and p is not None
                            and not matcher.match(Platform(p.os, p.architecture, p.variant))
                        ):
                            continue
                        await walk(child, depth + 1, "")
                else:
                    for entry in [doc["config"], *(doc.get("layers") or [])]:
                        await walk(Descriptor.from_json(entry), depth + 1, "")
                await push_manifest(session, desc, data, tag)
                report(desc, "done")
                return
            info = await client.content.info(desc.digest)

            def read() -> AsyncIterator[bytes]:
                return client.content.read(desc.digest)

            outcome = await push_blob(session, desc, read, dict(info.labels))
            report(desc, outcome)

        await walk(root, 0, parsed.tag)
    return root
