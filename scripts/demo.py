"""`make demo`: start pycontainerd in a temporary root with its built-in default
configuration, drive it with Debian's Go `ctr` (server version, plugins, a namespace,
an image built from busybox-static imported and unpacked, a container run through our
shim and runc that prints a line), and stop it cleanly."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pycontainerd import harness
from pycontainerd.images import build


def ctr(daemon: harness.Daemon, *args: str) -> None:
    cmd = ["ctr", "--address", str(daemon.address), *args]
    print(f"$ {' '.join(['ctr', *args])}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    if shutil.which("ctr") is None:
        print("demo: Debian's `ctr` (package containerd) is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="pycontainerd-demo-") as tmp:
        base = Path(tmp)
        print(f"starting pycontainerd in {base}", flush=True)
        with harness.pycontainerd(base) as daemon:
            ctr(daemon, "version")
            ctr(daemon, "plugins", "ls")
            ctr(daemon, "namespaces", "create", "demo", "purpose=make-demo")
            ctr(daemon, "namespaces", "ls")
            ctr(daemon, "namespaces", "rm", "demo")
            archive = base / "busybox.tar"
            build.write_oci_archive(
                build.make_image(build.busybox_files()), archive, "docker.io/library/busybox:demo"
            )
            ctr(daemon, "images", "import", str(archive))
            ctr(daemon, "images", "ls")
            ctr(
                daemon,
                "run",
                "--rm",
                "docker.io/library/busybox:demo",
                "demo",
                "echo",
                "hello from a container run by pycontainerd",
            )
            ctr(daemon, "images", "rm", "--sync", "docker.io/library/busybox:demo")
            print("stopping pycontainerd", flush=True)
        print(f"pycontainerd stopped cleanly (exit status {daemon.proc.returncode})")
        return 0 if daemon.proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
