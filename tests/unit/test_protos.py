"""Checks on our hand-written containerd .proto files and the modules generated from them.

1. The checked-in modules under ``src/pycontainerd/_api`` match what
   ``scripts/genprotos.py`` produces from ``proto/`` today.
2. Wire compatibility with containerd 1.6: every message, enum and service of
   Debian's containerd 1.6 protos exists in ours with the same full names,
   field numbers, field types and labels (we may have more, never different).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
API_DIR = SRC / "pycontainerd" / "_api"
GEN_SCRIPT = REPO / "scripts" / "genprotos.py"

# Debian's golang-github-containerd-containerd-dev (1.6.x) source tree.
CONTAINERD_16 = Path("/usr/share/gocode/src/github.com/containerd/containerd")
API_16 = CONTAINERD_16 / "api"
# Runtime v2 protos that lived outside api/ in 1.6.
RUNTIME_16 = (
    CONTAINERD_16 / "runtime" / "v2" / "task" / "shim.proto",
    CONTAINERD_16 / "runtime" / "v2" / "runc" / "options" / "oci.proto",
)

# Messages that the current API moved to another full name with the same wire
# layout. References to the old name must point at the new one in our protos.
MOVED = {
    ".containerd.services.events.v1.Envelope": ".containerd.types.Envelope",
    ".containerd.services.events.ttrpc.v1.Envelope": ".containerd.types.Envelope",
}
# Fields the current API dropped; we must keep their numbers reserved.
REMOVED_FIELDS = {
    (".containerd.runc.v1.Options", 8),  # criu_path, gone in 2.x
}

if str(SRC) not in sys.path:
    try:
        import pycontainerd  # noqa: F401
    except ImportError:  # running from a checkout without an install
        sys.path.insert(0, str(SRC))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "_api"
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"genprotos.py failed:\n{result.stdout}{result.stderr}"

    fresh, checked_in = _tree(out), _tree(API_DIR)
    missing = sorted(fresh.keys() - checked_in.keys())
    extra = sorted(checked_in.keys() - fresh.keys())
    changed = sorted(k for k in fresh.keys() & checked_in.keys() if fresh[k] != checked_in[k])
    problems = [f"missing: {k}" for k in missing]
    problems += [f"stale: {k}" for k in changed]
    problems += [f"not generated from proto/: {k}" for k in extra]
    assert not problems, (
        "src/pycontainerd/_api is out of date with proto/; run `make protos` "
        "(python scripts/genprotos.py).\n  " + "\n  ".join(problems)
    )


def _generated_module_names() -> list[str]:
    return sorted(
        ".".join(p.relative_to(SRC).with_suffix("").parts)
        for p in API_DIR.rglob("*_pb2*.py")
        if "__pycache__" not in p.parts
    )


def _import_generated() -> list[ModuleType]:
    return [importlib.import_module(name) for name in _generated_module_names()]


def test_every_generated_module_imports() -> None:
    modules = _import_generated()
    assert any(m.__name__.endswith("namespace_pb2_grpc") for m in modules)
    assert len(modules) >= 40


# --- wire compatibility with containerd 1.6 ---------------------------------

_DROP_IMPORT = re.compile(
    r'^\s*import\s+(?:weak\s+|public\s+)?"(?:[\w./-]*gogoproto/gogo\.proto|'
    r'github\.com/containerd/containerd/protobuf/plugin/fieldpath\.proto)";\s*$',
    re.MULTILINE,
)
_DROP_OPTION = re.compile(
    r"^\s*option\s+\((?:gogoproto|containerd\.plugin)\.\w+\)\s*=\s*[^;]*;\s*$", re.MULTILINE
)
_DROP_INLINE = re.compile(r"\s*\[\s*\(gogoproto\.[^\]]*\]")

_STATUS_STUB = """syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status {
  int32 code = 1;
  string message = 2;
  repeated google.protobuf.Any details = 3;
}
"""


def _strip_go_options(text: str, source: Path) -> str:
    """Drop gogoproto / fieldpath options: they only affect Go code generation."""
    text = _DROP_IMPORT.sub("", text)
    text = _DROP_OPTION.sub("", text)
    text = _DROP_INLINE.sub("", text)
    leftover = [ln for ln in text.splitlines() if "gogoproto" in ln or "containerd.plugin" in ln]
    if leftover:
        raise AssertionError(f"could not strip Go-only options from {source}: {leftover}")
    return text


def _compile_containerd_16(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    include = tmp_path / "include"
    sources = sorted(API_16.rglob("*.proto")) + [p for p in RUNTIME_16 if p.is_file()]
    rel_names: list[str] = []
    for src in sources:
        rel = Path("github.com/containerd/containerd") / src.relative_to(CONTAINERD_16)
        dest = include / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_strip_go_options(src.read_text(encoding="utf-8"), src), encoding="utf-8")
        rel_names.append(rel.as_posix())
    status = include / "google" / "rpc" / "status.proto"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(_STATUS_STUB, encoding="utf-8")

    spec = importlib.util.find_spec("grpc_tools")
    assert spec is not None and spec.origin is not None, "grpcio-tools is not installed"
    well_known = Path(spec.origin).resolve().parent / "_proto"
    out = tmp_path / "containerd-1.6.pb"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{include}",
        f"-I{well_known}",
        f"--descriptor_set_out={out}",
        *rel_names,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"compiling containerd 1.6 protos failed:\n{result.stderr}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _walk_messages(
    prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for msg in messages:
        name = f"{prefix}.{msg.name}"
        yield name, msg
        yield from _walk_messages(name, msg.nested_type)


def _walk_enums(
    prefix: str, file_or_msg: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto
) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    for enum in file_or_msg.enum_type:
        yield f"{prefix}.{enum.name}", enum
    nested = (
        file_or_msg.message_type
        if isinstance(file_or_msg, descriptor_pb2.FileDescriptorProto)
        else file_or_msg.nested_type
    )
    for msg in nested:
        yield from _walk_enums(f"{prefix}.{msg.name}", msg)


class _Index:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        for fd in files:
            prefix = f".{fd.package}" if fd.package else ""
            self.messages.update(_walk_messages(prefix, fd.message_type))
            self.enums.update(_walk_enums(prefix, fd))
            self.services.update((f"{prefix}.{s.name}", s) for s in fd.service)


def _our_index() -> _Index:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for module in _import_generated():
        file_desc = getattr(module, "DESCRIPTOR", None)
        if file_desc is None:  # *_pb2_grpc modules
            continue
        files[file_desc.name] = descriptor_pb2.FileDescriptorProto.FromString(
            file_desc.serialized_pb
        )
    return _Index([files[name] for name in sorted(files)])


def _in_real_oneof(field: descriptor_pb2.FieldDescriptorProto) -> bool:
    return field.HasField("oneof_index") and not field.proto3_optional


def _compare(old: _Index, new: _Index) -> list[str]:
    errors: list[str] = []
    type_name = descriptor_pb2.FieldDescriptorProto.Type.Name
    label_name = descriptor_pb2.FieldDescriptorProto.Label.Name

    for name, old_msg in sorted(old.messages.items()):
        ours_name = MOVED.get(name, name)
        ours = new.messages.get(ours_name)
        if ours is None:
            errors.append(f"message {name} missing")
            continue
        ours_fields = {f.number: f for f in ours.field}
        for f in old_msg.field:
            where = f"{name}.{f.name} (#{f.number})"
            if (name, f.number) in REMOVED_FIELDS:
                if f.number in ours_fields or not any(
                    r.start <= f.number < r.end for r in ours.reserved_range
                ):
                    errors.append(f"{where}: removed upstream, must be reserved in ours")
                continue
            o = ours_fields.get(f.number)
            if o is None:
                errors.append(f"{where}: missing")
                continue
            if o.name != f.name:
                errors.append(f"{where}: named {o.name!r} in ours")
            if o.type != f.type:
                errors.append(f"{where}: type {type_name(o.type)} != {type_name(f.type)}")
            if o.label != f.label:
                errors.append(f"{where}: label {label_name(o.label)} != {label_name(f.label)}")
            if f.type_name and MOVED.get(f.type_name, f.type_name) != o.type_name:
                errors.append(f"{where}: type {o.type_name} != {f.type_name}")
            if _in_real_oneof(f) != _in_real_oneof(o) or (
                _in_real_oneof(f)
                and old_msg.oneof_decl[f.oneof_index].name != ours.oneof_decl[o.oneof_index].name
            ):
                errors.append(f"{where}: oneof membership differs")

    for name, old_enum in sorted(old.enums.items()):
        ours_enum = new.enums.get(name)
        if ours_enum is None:
            errors.append(f"enum {name} missing")
            continue
        ours_values = {(v.name, v.number) for v in ours_enum.value}
        for v in old_enum.value:
            if (v.name, v.number) not in ours_values:
                errors.append(f"enum {name}: value {v.name} = {v.number} missing")

    for name, old_svc in sorted(old.services.items()):
        ours_svc = new.services.get(name)
        if ours_svc is None:
            errors.append(f"service {name} missing")
            continue
        ours_methods = {m.name: m for m in ours_svc.method}
        for m in old_svc.method:
            om = ours_methods.get(m.name)
            where = f"rpc {name}/{m.name}"
            if om is None:
                errors.append(f"{where} missing")
                continue
            if MOVED.get(m.input_type, m.input_type) != om.input_type:
                errors.append(f"{where}: input {om.input_type} != {m.input_type}")
            if MOVED.get(m.output_type, m.output_type) != om.output_type:
                errors.append(f"{where}: output {om.output_type} != {m.output_type}")
            if (m.client_streaming, m.server_streaming) != (
                om.client_streaming,
                om.server_streaming,
            ):
                errors.append(f"{where}: streaming mode differs")
    return errors


def test_wire_compatible_with_containerd_16(tmp_path: Path) -> None:
    if not API_16.is_dir():
        pytest.skip(
            f"containerd 1.6 protos not found at {API_16} "
            "(apt-get install golang-github-containerd-containerd-dev)"
        )
    fds = _compile_containerd_16(tmp_path)
    containerd_files = [
        f for f in fds.file if f.name.startswith("github.com/containerd/containerd/")
    ]
    old = _Index(containerd_files)
    assert len(old.messages) > 100, "unexpectedly few messages in containerd 1.6 protos"
    assert len(old.services) >= 12

    errors = _compare(old, _our_index())
    assert not errors, "differences from containerd 1.6 on the wire:\n  " + "\n  ".join(errors)
