#!/usr/bin/env python3
"""Generate the Python protobuf/gRPC modules from ``proto/``.

Usage: ``python scripts/genprotos.py [--out DIR]`` (default ``src/pycontainerd/_api``).

Runs ``grpc_tools.protoc`` with the current interpreter, producing ``*_pb2.py``,
``*_pb2.pyi`` (mypy-protobuf, or protoc's own ``--pyi_out`` if the plugin is
missing) and ``*_pb2_grpc.py`` for files that declare services. The generated
imports are then rewritten so that our proto packages live under
``pycontainerd._api`` (e.g. ``containerd.types.mount_pb2`` becomes
``pycontainerd._api.containerd.types.mount_pb2``), and every package directory
gets an ``__init__.py``. The output only depends on ``proto/`` and the tool
versions, so it can be checked for staleness by regenerating and comparing.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
DEFAULT_OUT = REPO_ROOT / "src" / "pycontainerd" / "_api"
PACKAGE_PREFIX = "pycontainerd._api"

# Top-level proto packages that we generate ourselves and therefore relocate
# under PACKAGE_PREFIX. google.protobuf is deliberately absent: it comes from
# the protobuf runtime.
OWN_ROOTS = ("containerd", "grpc.health", "google.rpc", "ttrpc")

_ROOTS_RE = "|".join(re.escape(root) for root in OWN_ROOTS)
# "from containerd.types import mount_pb2" -> "from pycontainerd._api.containerd.types import ..."
_FROM_IMPORT_RE = re.compile(
    rf"^(?P<lead>[ \t]*from[ \t]+)(?P<mod>(?:{_ROOTS_RE})(?:\.\w+)*)(?P<tail>[ \t]+import\b)",
    re.MULTILINE,
)
# Any dotted reference to one of our generated modules, as used by
# "import containerd.types.mount_pb2", annotations in .pyi files
# ("containerd.types.mount_pb2.Mount") and the module-name string handed to
# the descriptor builder.
_MODULE_REF_RE = re.compile(rf"(?<![\w.])(?P<mod>(?:{_ROOTS_RE})(?:\.\w+)*\.\w+_pb2(?:_grpc)?)\b")

HEADER_INIT = '"""Generated protobuf packages. Do not edit; run `make protos`."""\n'


def _protoc_include() -> Path:
    """grpc_tools' bundled include dir (google/protobuf/*.proto)."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise RuntimeError("grpc_tools is not installed (pip install grpcio-tools)")
    return Path(spec.origin).resolve().parent / "_proto"


def _find_plugin(name: str) -> Path | None:
    """Locate a protoc plugin next to the interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def proto_files(proto_root: Path) -> list[str]:
    return sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))


def _run_protoc(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"protoc failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout}{result.stderr}"
        )


def rewrite_imports(text: str) -> str:
    text = _FROM_IMPORT_RE.sub(lambda m: f"{m['lead']}{PACKAGE_PREFIX}.{m['mod']}{m['tail']}", text)
    return _MODULE_REF_RE.sub(lambda m: f"{PACKAGE_PREFIX}.{m['mod']}", text)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Regenerate ``out_dir`` from scratch; returns the written files (sorted)."""
    files = proto_files(proto_root)
    if not files:
        raise RuntimeError(f"no .proto files under {proto_root}")
    includes = [f"-I{proto_root}", f"-I{_protoc_include()}"]

    with tempfile.TemporaryDirectory(prefix="genprotos-") as tmp_name:
        tmp = Path(tmp_name)
        mypy_plugin = _find_plugin("protoc-gen-mypy")
        mypy_grpc_plugin = _find_plugin("protoc-gen-mypy_grpc")
        if mypy_plugin is None or mypy_grpc_plugin is None:
            raise RuntimeError("mypy-protobuf is not installed: run `make venv`")
        _run_protoc(
            [
                *includes,
                f"--python_out={tmp}",
                f"--plugin=protoc-gen-mypy={mypy_plugin}",
                f"--mypy_out={tmp}",
                *files,
            ]
        )
        service_files = [f for f in files if _declares_service(proto_root / f)]
        if service_files:
            _run_protoc(
                [
                    *includes,
                    f"--grpc_python_out={tmp}",
                    f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
                    f"--mypy_grpc_out={tmp}",
                    *service_files,
                ]
            )

        for path in sorted(tmp.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".pyi"):
                original = path.read_text(encoding="utf-8")
                rewritten = rewrite_imports(original)
                if rewritten != original:
                    path.write_text(rewritten, encoding="utf-8")

        for directory in sorted({tmp, *(p for p in tmp.rglob("*") if p.is_dir())}):
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text(HEADER_INIT if directory == tmp else "", encoding="utf-8")

        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, out_dir)

    return sorted(p for p in out_dir.rglob("*") if p.is_file())


_SERVICE_RE = re.compile(r"^\s*service\s+\w+\s*\{", re.MULTILINE)


def _declares_service(path: Path) -> bool:
    return bool(_SERVICE_RE.search(path.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    written = generate(args.out.resolve())
    print(f"generated {len(written)} files in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
