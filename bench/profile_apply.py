"""Apply the unpack benchmark's layers in-process, timed, optionally under cProfile.

This measures :func:`pycontainerd.archive.apply_layer` alone (no daemon, no gRPC):
each layer of the cached bench image is applied, bottom first, to one directory in
"overlay" whiteout mode, as the overlayfs snapshotter's upper directories would get.

Usage: python bench/profile_apply.py [--profile] [--dir DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import image
from pycontainerd import archive


def layer_members(tf: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, str]]:
    """The layer blobs of the image archive, bottom first, with their diff ids."""
    index = json.load(_open(tf, "index.json"))
    manifest = json.load(_open(tf, _blob(index["manifests"][0]["digest"])))
    config = json.load(_open(tf, _blob(manifest["config"]["digest"])))
    return [
        (tf.getmember(_blob(layer["digest"])), diff_id)
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _open(tf: tarfile.TarFile, name: str):  # type: ignore[no-untyped-def]
    f = tf.extractfile(name)
    assert f is not None
    return f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--profile", action="store_true", help="print the top cProfile entries")
    p.add_argument("--dir", type=Path, help="where to unpack (default: a temporary dir)")
    args = p.parse_args(argv)
    path = image.cached_image()
    base = Path(tempfile.mkdtemp(prefix="apply-", dir=args.dir))
    profiler = cProfile.Profile() if args.profile else None
    total_wall = 0.0
    try:
        with tarfile.open(path) as tf:
            for n, (member, diff_id) in enumerate(layer_members(tf)):
                root = base / str(n)
                root.mkdir()
                stream = _open(tf, member.name)
                usage0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                result = archive.apply_layer(
                    root,
                    stream,
                    whiteout_mode="overlay",
                    media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                    expected_diff_id=diff_id,
                )
                if profiler is not None:
                    profiler.disable()
                wall = time.perf_counter() - t0
                usage1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
                total_wall += wall
                print(
                    f"layer {n}: {result.size / 1e6:6.0f} MB in {wall:5.2f} s "
                    f"({result.size / 1e6 / wall:4.0f} MB/s), cpu {cpu:5.2f} s",
                    flush=True,
                )
        print(f"total: {total_wall:.2f} s")
    finally:
        shutil.rmtree(base)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
