"""The pull's checks and manifest choice that need no daemon (tests/unit/test_remotes.py's
fake registry; a client object that is never touched proves nothing reached a store)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from pycontainerd.client import pull as pull_module
from pycontainerd.client.types import Descriptor, DescriptorPlatform
from pycontainerd.errdefs import NotFound, NotImplemented_
from pycontainerd.images import mediatypes as mt
from pycontainerd.images.platforms import Matcher, Platform
from pycontainerd.remotes.resolver import DOCKER_SCHEMA1
from tests.unit.test_remotes import FakeRegistry, session


def _index(*entries: Descriptor) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    ).encode()


def _desc(media_type: str, seed: bytes, platform: DescriptorPlatform | None = None) -> Descriptor:
    return Descriptor(
        media_type, "sha256:" + hashlib.sha256(seed).hexdigest(), 10, platform=platform
    )


@pytest.mark.parametrize(
    ("media_type", "error", "message"),
    [
        ("application/x-garbage", NotFound, "unexpected media type application/x-garbage for"),
        ("", NotFound, "unexpected media type  for"),
        (mt.OCI_LAYER_GZIP, NotFound, "unexpected media type"),
        (DOCKER_SCHEMA1, NotImplemented_, "schema 1"),
    ],
)
async def test_an_index_entry_that_is_no_manifest_is_refused_unfetched(
    media_type: str, error: type[Exception], message: str
) -> None:
    registry = FakeRegistry()
    odd = _desc(media_type, b"odd")
    good = _desc(mt.OCI_MANIFEST, b"good")
    index = registry.add_manifest("v1", mt.OCI_INDEX, _index(good, odd))
    untouched: object = object()
    async with session(registry) as s:
        puller = pull_module._Puller(untouched, s, None, None)  # type: ignore[arg-type]
        with pytest.raises(error, match=message):
            await puller.handle(index)
    assert [r.url.path for r in registry.requests] == [f"/v2/repo/manifests/{index.digest}"]


async def test_an_entry_for_another_platform_is_not_checked() -> None:
    """Only the entries the pull would fetch are checked (containerd filters first)."""
    registry = FakeRegistry()
    s390x = DescriptorPlatform("linux", "s390x")
    odd = _desc("application/x-garbage", b"odd", s390x)
    index = registry.add_manifest("v1", mt.OCI_INDEX, _index(odd))
    amd64 = Matcher([Platform("linux", "amd64")])
    async with session(registry) as s:
        puller = pull_module._Puller(object(), s, amd64, None)  # type: ignore[arg-type]
        with pytest.raises(NotFound, match="no manifest for the requested platform"):
            await puller.handle(index)


async def test_the_unpack_chooses_its_manifest_as_documents_arrive() -> None:
    """``choose_manifest`` waits for each document to be parsed (not committed) and
    picks what ``images.manifest`` would: the preferred platform, through nested indexes."""
    arm = _desc(mt.OCI_MANIFEST, b"arm", DescriptorPlatform("linux", "arm64"))
    amd = _desc(mt.OCI_MANIFEST, b"amd", DescriptorPlatform("linux", "amd64"))
    nested = _desc(mt.OCI_INDEX, b"nested")
    root = _desc(mt.OCI_INDEX, b"root")
    async with session(FakeRegistry()) as s:
        puller = pull_module._Puller(object(), s, None, None)  # type: ignore[arg-type]
        matcher = Matcher([Platform("linux", "amd64")])
        # Started before any document is parsed: it waits for them.
        choice = asyncio.create_task(puller.choose_manifest(root, matcher, 0))
        docs = {
            root.digest: json.loads(_index(nested)),
            nested.digest: json.loads(_index(arm, amd)),
            arm.digest: {"config": {}, "layers": []},
            amd.digest: {"config": {}, "layers": ["amd"]},
        }
        for digest, doc in docs.items():
            puller._parsed(digest).set_result(doc)
        found = await asyncio.wait_for(choice, 5)
    assert found is not None
    desc, doc = found
    assert desc == amd and doc["layers"] == ["amd"]
