"""The default OCI spec and the ``with_*`` options (containerd 1.6's oci package)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycontainerd.errdefs import InvalidArgument, NotFound
from pycontainerd.oci import spec as oci


def test_default_spec_matches_containerd() -> None:
    s = oci.generate_spec("ns", "c1")
    assert s["ociVersion"] == "1.0.2-dev"
    assert s["root"] == {"path": "rootfs"}
    proc = s["process"]
    assert proc["cwd"] == "/" and proc["noNewPrivileges"] is True
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    caps = proc["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert caps["bounding"] == list(oci.DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps["effective"] and "CAP_KILL" in caps["effective"]
    linux = s["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert linux["cgroupsPath"] == "/ns/c1"
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    dests = [m["destination"] for m in s["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"]
    sys_mount = s["mounts"][5]
    assert sys_mount["type"] == "sysfs" and "ro" in sys_mount["options"]


def test_specs_are_independent() -> None:
    a = oci.generate_spec("ns", "a", oci.with_privileged)
    b = oci.generate_spec("ns", "b")
    assert b["linux"]["maskedPaths"] and "maskedPaths" not in a["linux"]


def test_any_round_trip() -> None:
    s = oci.generate_spec("default", "x", oci.with_process_args("echo", "hi"))
    value = oci.spec_to_any(s)
    assert value.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    assert json.loads(value.value) == s
    assert oci.spec_from_any(value) == s
    value.type_url = "something.else/Spec"
    with pytest.raises(InvalidArgument):
        oci.spec_from_any(value)
    value.type_url = oci.SPEC_TYPE_URL
    value.value = b"[1]"
    with pytest.raises(InvalidArgument):
        oci.spec_from_any(value)


def test_env_replace_append_and_unset() -> None:
    env = oci.replace_or_append_env(["PATH=/bin", "A=1", "B=2"], ["A=9", "C=3", "B"])
    assert env == ["PATH=/bin", "A=9", "C=3"]
    s = oci.generate_spec("ns", "x", oci.with_default_path_env, oci.with_env(["X=1"]))
    assert s["process"]["env"] == [oci.DEFAULT_PATH_ENV, "X=1"]


def test_image_config() -> None:
    config = {
        "config": {
            "Entrypoint": ["/entry"],
            "Cmd": ["a", "b"],
            "Env": ["PATH=/img", "K=v"],
            "WorkingDir": "/work",
        }
    }
    s = oci.generate_spec("ns", "x", oci.with_env(["K=override"]), oci.with_image_config(config))
    proc = s["process"]
    assert proc["args"] == ["/entry", "a", "b"]
    assert proc["env"] == ["PATH=/img", "K=override"]
    assert proc["cwd"] == "/work"
    assert proc["user"]["additionalGids"] == [0]
    s = oci.generate_spec("ns", "x", oci.with_image_config(config, args=["c"]))
    assert s["process"]["args"] == ["/entry", "c"]
    s = oci.generate_spec("ns", "x", oci.with_image_config({"config": {"Cmd": ["sh"]}}))
    assert s["process"]["env"] == [oci.DEFAULT_PATH_ENV] and s["process"]["cwd"] == "/"


def _rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001::/home/app:/bin/sh\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\napp:x:1001:\nwheel:x:10:app,other\n")
    return tmp_path


def test_user_resolution(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    passwd, group = (root / "etc/passwd").read_text(), (root / "etc/group").read_text()
    assert oci.resolve_user("app", passwd, group) == (1000, 1001)
    assert oci.resolve_user("1000", passwd, group) == (1000, 1001)
    assert oci.resolve_user("1234", passwd, group) == (1234, 0)
    assert oci.resolve_user("app:wheel", passwd, group) == (1000, 10)
    assert oci.resolve_user("5:6") == (5, 6)
    with pytest.raises(NotFound):
        oci.resolve_user("nobody", passwd, group)
    with pytest.raises(NotFound):
        oci.resolve_user("app:nogroup", passwd, group)
    with pytest.raises(InvalidArgument):
        oci.resolve_user("a:b:c")
    s = oci.generate_spec("ns", "x", oci.with_user("app", root))
    assert s["process"]["user"]["uid"] == 1000 and s["process"]["user"]["gid"] == 1001
    cfg = {"config": {"User": "app", "Cmd": ["sh"]}}
    s = oci.generate_spec("ns", "x", oci.with_image_config(cfg, rootfs=root))
    assert s["process"]["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [1001, 10]}


def test_privileged_tty_hostname_mounts_and_host_network() -> None:
    s = oci.generate_spec(
        "ns",
        "x",
        oci.with_privileged,
        oci.with_all_devices_allowed,
        oci.with_tty,
        oci.with_tty_size(80, 24),
        oci.with_hostname("box"),
        oci.with_mounts(
            [{"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"]}]
        ),
        oci.with_host_network,
        oci.with_rootfs_readonly,
        oci.with_memory_limit(1 << 20),
        oci.with_cpus(0.5),
        oci.with_annotations({"a": "b"}),
    )
    assert (
        "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
        or not oci.current_capabilities()
    )
    assert "maskedPaths" not in s["linux"] and "readonlyPaths" not in s["linux"]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert next(m for m in s["mounts"] if m["destination"] == "/sys")["options"][-1] == "rw"
    assert s["process"]["terminal"] is True and "TERM=xterm" in s["process"]["env"]
    assert s["process"]["consoleSize"] == {"height": 24, "width": 80}
    assert s["hostname"] == "box"
    dests = [m["destination"] for m in s["mounts"]]
    assert dests[-3:] == ["/data", "/etc/hosts", "/etc/resolv.conf"]
    assert "network" not in [n["type"] for n in s["linux"]["namespaces"]]
    assert s["root"]["readonly"] is True
    assert s["linux"]["resources"]["memory"] == {"limit": 1 << 20}
    assert s["linux"]["resources"]["cpu"] == {"period": 100000, "quota": 50000}
    assert s["annotations"] == {"a": "b"}


def test_mount_replaces_same_destination() -> None:
    tmp = {"destination": "/run", "type": "bind", "source": "/x", "options": []}
    s = oci.generate_spec("ns", "x", oci.with_mounts([tmp]))
    runs = [m for m in s["mounts"] if m["destination"] == "/run"]
    assert runs == [tmp]


def test_default_unix_devices() -> None:
    s = oci.generate_spec("ns", "x", oci.with_default_unix_devices)
    devices = s["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in devices


def test_rlimit_and_cgroup() -> None:
    s = oci.generate_spec(
        "ns", "x", oci.with_rlimit("RLIMIT_NOFILE", 4096, 2048), oci.with_cgroup("")
    )
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 2048}]
    assert s["linux"]["cgroupsPath"] == ""


def test_host_devices() -> None:
    devices = oci.host_devices()
    null = next(d for d in devices if d["path"] == "/dev/null")
    assert (null["type"], null["major"], null["minor"], null["fileMode"]) == ("c", 1, 3, 0o666)
    assert not any(d["path"].startswith(("/dev/pts/", "/dev/console")) for d in devices)
    s = oci.generate_spec("ns", "x", oci.with_host_devices)
    assert s["linux"]["devices"] == devices
