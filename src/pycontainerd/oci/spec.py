"""containerd's default Linux OCI runtime spec, and options that change it.

A spec is the OCI runtime-spec JSON as a plain ``dict`` (``ociVersion``, ``process``,
``root``, ``mounts``, ``linux`` …), so it serialises to exactly what runc reads. An option
is a function that edits a spec in place, applied in order by ``generate_spec``, as
containerd's ``oci.SpecOpts`` are. The defaults follow containerd 1.6's
``oci/spec.go`` (``populateDefaultUnixSpec``) and ``oci/mounts.go``.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from pycontainerd.errdefs import InvalidArgument, NotFound

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

# containerd's typeurl registers the runtime-spec Spec under this URL.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
OCI_VERSION = "1.0.2-dev"  # the runtime-spec version containerd 1.6 vendors
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

DEFAULT_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def _mount(dest: str, typ: str, source: str, options: Sequence[str]) -> dict[str, Any]:
    return {"destination": dest, "type": typ, "source": source, "options": list(options)}


def default_mounts() -> list[dict[str, Any]]:
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        _mount(
            "/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        ),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ]


def default_spec(namespace: str, container_id: str) -> Spec:
    """containerd's default Linux spec for ``container_id`` in ``namespace``.

    The process has no args yet (an option or the image config supplies them); the
    cgroup path is ``/<namespace>/<id>`` and every device is denied, as in containerd.
    """
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {
                "bounding": list(caps),
                "effective": list(caps),
                "permitted": list(caps),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": f"/{namespace}/{container_id}",
            "namespaces": [{"type": t} for t in DEFAULT_NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def generate_spec(namespace: str, container_id: str, *opts: SpecOpt) -> Spec:
    """The default spec with ``opts`` applied in order (containerd's ``oci.GenerateSpec``)."""
    spec = default_spec(namespace, container_id)
    for opt in opts:
        opt(spec)
    return spec


def spec_to_any(spec: Spec) -> any_pb2.Any:
    """The spec as containerd stores it: JSON in an Any with the runtime-spec type URL."""
    return any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(spec).encode())


def spec_from_any(value: any_pb2.Any) -> Spec:
    """Raises InvalidArgument when the Any does not hold a runtime-spec JSON object."""
    if not value.type_url.endswith("runtime-spec/1/Spec"):
        raise InvalidArgument(f"not an OCI runtime spec: {value.type_url!r}")
    try:
        spec = json.loads(value.value)
    except ValueError as exc:
        raise InvalidArgument(f"OCI runtime spec is not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidArgument("OCI runtime spec is not a JSON object")
    return spec


# -- environment ---------------------------------------------------------------------------


def replace_or_append_env(defaults: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """``defaults`` with each ``KEY=value`` of ``overrides`` replacing the same key or
    appended; an override without ``=`` removes the key (containerd's
    ``replaceOrAppendEnvValues``)."""
    result = list(defaults)
    for item in overrides:
        key = item.split("=", 1)[0]
        matches = [i for i, e in enumerate(result) if e.split("=", 1)[0] == key]
        if "=" not in item:
            result = [e for i, e in enumerate(result) if i not in matches]
        elif matches:
            result[matches[0]] = item
        else:
            result.append(item)
    return result


def _process(spec: Spec) -> dict[str, Any]:
    proc: dict[str, Any] = spec.setdefault("process", {})
    return proc


def _linux(spec: Spec) -> dict[str, Any]:
    linux: dict[str, Any] = spec.setdefault("linux", {})
    return linux


def with_process_args(*args: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _process(spec)["args"] = list(args)

    return opt


def with_process_cwd(cwd: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _process(spec)["cwd"] = cwd

    return opt


def with_default_path_env(spec: Spec) -> None:
    proc = _process(spec)
    proc["env"] = replace_or_append_env(proc.get("env", []), [DEFAULT_PATH_ENV])


def with_env(env: Iterable[str]) -> SpecOpt:
    """Set ``KEY=value`` entries over the current environment (``KEY`` alone unsets)."""
    items = list(env)

    def opt(spec: Spec) -> None:
        proc = _process(spec)
        proc["env"] = replace_or_append_env(proc.get("env", []), items)

    return opt


def with_hostname(name: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["hostname"] = name

    return opt


def with_mounts(mounts: Iterable[Mapping[str, Any]]) -> SpecOpt:
    """Add mounts (OCI ``{"destination", "type", "source", "options"}`` dicts) after the
    defaults; a mount on a destination already present replaces it."""
    extra = [dict(m) for m in mounts]

    def opt(spec: Spec) -> None:
        dests = {m["destination"] for m in extra}
        current = [m for m in spec.get("mounts", []) if m.get("destination") not in dests]
        spec["mounts"] = current + copy.deepcopy(extra)

    return opt


def with_tty(spec: Spec) -> None:
    proc = _process(spec)
    proc["terminal"] = True
    proc["env"] = [*proc.get("env", []), "TERM=xterm"]


def with_tty_size(width: int, height: int) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _process(spec)["consoleSize"] = {"height": height, "width": width}

    return opt


def with_host_namespace(ns_type: str) -> SpecOpt:
    """Leave the container in the host's namespace of this type (``network``, ``pid`` …)."""

    def opt(spec: Spec) -> None:
        linux = _linux(spec)
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n.get("type") != ns_type]

    return opt


def with_host_hosts_file(spec: Spec) -> None:
    with_mounts([_mount("/etc/hosts", "bind", "/etc/hosts", ["rbind", "ro"])])(spec)


def with_host_resolvconf(spec: Spec) -> None:
    with_mounts([_mount("/etc/resolv.conf", "bind", "/etc/resolv.conf", ["rbind", "ro"])])(spec)


def with_host_network(spec: Spec) -> None:
    """The host's network namespace, hosts file and resolv.conf (``ctr run --net-host``)."""
    with_host_namespace("network")(spec)
    with_host_hosts_file(spec)
    with_host_resolvconf(spec)


def with_rootfs_readonly(spec: Spec) -> None:
    spec.setdefault("root", {"path": "rootfs"})["readonly"] = True


def with_cgroup(path: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _linux(spec)["cgroupsPath"] = path

    return opt


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec.setdefault("annotations", {}).update(annotations)

    return opt


def with_capabilities(caps: Iterable[str]) -> SpecOpt:
    wanted = list(caps)

    def opt(spec: Spec) -> None:
        _process(spec)["capabilities"] = {
            k: list(wanted) for k in ("bounding", "effective", "permitted")
        }

    return opt


def current_capabilities() -> list[str]:
    """This process's effective capabilities by name (what ``--privileged`` grants)."""
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    effective = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    names = _CAP_NAMES[: last_cap + 1]
    return [name for i, name in enumerate(names) if effective >> i & 1]


# capability numbers from linux/capability.h, in order
_CAP_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def with_privileged(spec: Spec) -> None:
    """Every capability this process has, no masked or read-only paths, a writable
    sysfs, no seccomp or AppArmor profile (containerd's ``WithPrivileged``; ``ctr run
    --privileged`` adds ``with_all_devices_allowed`` and ``with_host_devices``)."""
    with_capabilities(current_capabilities())(spec)
    proc = _process(spec)
    proc.pop("apparmorProfile", None)
    proc.pop("selinuxLabel", None)
    linux = _linux(spec)
    linux.pop("seccomp", None)
    linux.pop("maskedPaths", None)
    linux.pop("readonlyPaths", None)
    for m in spec.get("mounts", []):
        if m.get("type") in ("sysfs", "cgroup"):
            m["options"] = ["rw" if o == "ro" else o for o in m.get("options", [])]


def with_all_devices_allowed(spec: Spec) -> None:
    """Read, write and mknod on every device (replaces the device cgroup rules)."""
    _linux(spec).setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]


# /dev subdirectories that hold no host devices to pass on (as containerd skips them)
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def host_devices(path: Path = Path("/dev")) -> list[dict[str, Any]]:
    """The block and character devices under ``path``, as OCI ``linux.devices`` entries
    (containerd's ``HostDevices``: sorted by name, no console, no FIFOs)."""
    out: list[dict[str, Any]] = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in _SKIPPED_DEV_DIRS:
                out += host_devices(Path(entry.path))
            continue
        if entry.name == "console":
            continue
        try:
            st = os.lstat(entry.path)
        except FileNotFoundError:
            continue
        if stat.S_ISBLK(st.st_mode):
            kind = "b"
        elif stat.S_ISCHR(st.st_mode):
            kind = "c"
        else:
            continue
        out.append(
            {
                "path": entry.path,
                "type": kind,
                "major": os.major(st.st_rdev),
                "minor": os.minor(st.st_rdev),
                "fileMode": st.st_mode & ~stat.S_IFMT(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
    return out


def with_host_devices(spec: Spec) -> None:
    """Every host device node in the container (``ctr run --privileged``)."""
    linux = _linux(spec)
    linux["devices"] = [*linux.get("devices", []), *host_devices()]


# -- users ---------------------------------------------------------------------------------


def _parse_db(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(user: str, passwd: str = "", group: str = "") -> tuple[int, int]:
    """``uid``, ``gid``, ``name``, ``uid:gid`` or ``name:group`` to numeric ids, names
    looked up in the given ``/etc/passwd`` and ``/etc/group`` texts.

    A uid alone takes the gid of its passwd entry, or 0 when there is none (containerd's
    ``WithUserID``).

    Raises:
        NotFound: a name is not in the databases.
        InvalidArgument: the string has more than one ``:``.
    """
    parts = user.split(":")
    if len(parts) > 2 or not parts[0]:
        raise InvalidArgument(f"invalid user {user!r}: want uid, name, uid:gid or name:group")
    users = _parse_db(passwd)
    name = parts[0]
    if name.isdigit():
        uid = int(name)
        gid = next((int(u[3]) for u in users if len(u) > 3 and u[2] == name), 0)
    else:
        entry = next((u for u in users if len(u) > 3 and u[0] == name), None)
        if entry is None:
            raise NotFound(f"no user {name!r} in the container's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    if len(parts) == 2:
        grp = parts[1]
        if grp.isdigit():
            gid = int(grp)
        else:
            gentry = next((g for g in _parse_db(group) if len(g) > 2 and g[0] == grp), None)
            if gentry is None:
                raise NotFound(f"no group {grp!r} in the container's /etc/group")
            gid = int(gentry[2])
    return uid, gid


def _user_name(uid: int, passwd: str) -> str:
    return next((u[0] for u in _parse_db(passwd) if len(u) > 2 and u[2] == str(uid)), "")


def supplementary_gids(user_name: str, group: str) -> list[int]:
    """The gids of the groups listing ``user_name`` as a member (not its own group)."""
    out = []
    for g in _parse_db(group):
        if len(g) > 3 and g[0] != user_name and user_name in g[3].split(","):
            out.append(int(g[2]))
    return out


def _read(rootfs: Path | None, rel: str) -> str:
    if rootfs is None:
        return ""
    # A symlink inside the rootfs must not lead out of it; these files are plain.
    path = rootfs / rel
    if path.is_symlink() or not path.is_file():
        return ""
    return path.read_text(errors="replace")


@dataclass(frozen=True, slots=True)
class UserDB:
    """The texts of a container's ``/etc/passwd`` and ``/etc/group`` (empty if absent)."""

    passwd: str = ""
    group: str = ""


Users = Path | UserDB | None
"""Where names resolve: a rootfs directory, the files' texts, or nowhere."""


def _user_db(users: Users) -> UserDB:
    if isinstance(users, UserDB):
        return users
    return UserDB(_read(users, "etc/passwd"), _read(users, "etc/group"))


def with_user(user: str, rootfs: Users = None) -> SpecOpt:
    """Run as ``user`` (``uid``, ``uid:gid``, ``name`` or ``name:group``), names resolved
    from the ``etc/passwd`` and ``etc/group`` files under ``rootfs`` (or a ``UserDB``).

    Raises (when applied):
        NotFound: a name is not in the databases (or none was given).
    """

    def opt(spec: Spec) -> None:
        db = _user_db(rootfs)
        uid, gid = resolve_user(user, db.passwd, db.group)
        u = _process(spec).setdefault("user", {})
        u["uid"], u["gid"] = uid, gid

    return opt


def with_additional_gids(gids: Iterable[int]) -> SpecOpt:
    wanted = sorted(set(gids))

    def opt(spec: Spec) -> None:
        _process(spec).setdefault("user", {"uid": 0, "gid": 0})["additionalGids"] = wanted

    return opt


# -- image config --------------------------------------------------------------------------


def with_image_config(
    image_config: Mapping[str, Any], args: Sequence[str] = (), rootfs: Users = None
) -> SpecOpt:
    """Process args, env, cwd and user from an OCI image config (the JSON document's
    ``config`` object: ``Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir``, ``User``).

    ``args``, when given, replace ``Cmd``; the entrypoint stays in front. The image's env
    is the base and env already in the spec overrides it; an image without env gets the
    default PATH. Names in ``User`` resolve through ``rootfs`` (a directory or a
    ``UserDB``), which also gives the user's supplementary groups.
    """
    cfg = dict(image_config.get("config") or {})

    def opt(spec: Spec) -> None:
        proc = _process(spec)
        defaults = cfg.get("Env") or [DEFAULT_PATH_ENV]
        proc["env"] = replace_or_append_env(defaults, proc.get("env", []))
        cmd = list(args) if args else list(cfg.get("Cmd") or [])
        proc["args"] = list(cfg.get("Entrypoint") or []) + cmd
        proc["cwd"] = cfg.get("WorkingDir") or "/"
        user = cfg.get("User") or ""
        if user:
            with_user(user, rootfs)(spec)
        # containerd adds the user's supplementary groups from the rootfs' /etc/group,
        # always including the primary gid.
        u = proc.setdefault("user", {"uid": 0, "gid": 0})
        db = _user_db(rootfs)
        name = _user_name(u.get("uid", 0), db.passwd)
        gids = supplementary_gids(name, db.group) if name else []
        if u.get("gid", 0) not in gids:
            gids = [u.get("gid", 0), *gids]
        u["additionalGids"] = gids

    return opt


def with_rootfs_path(path: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec.setdefault("root", {})["path"] = path

    return opt


def with_rlimit(kind: str, hard: int, soft: int) -> SpecOpt:
    def opt(spec: Spec) -> None:
        proc = _process(spec)
        rest = [r for r in proc.get("rlimits", []) if r.get("type") != kind]
        proc["rlimits"] = [*rest, {"type": kind, "hard": hard, "soft": soft}]

    return opt


def with_memory_limit(limit: int) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _linux(spec).setdefault("resources", {}).setdefault("memory", {})["limit"] = limit

    return opt


def with_cpus(cpus: float, period: int = 100000) -> SpecOpt:
    """A CPU quota of ``cpus`` CPUs per ``period`` microseconds (``ctr run --cpus``)."""

    def opt(spec: Spec) -> None:
        cpu = _linux(spec).setdefault("resources", {}).setdefault("cpu", {})
        cpu["period"], cpu["quota"] = period, int(cpus * period)

    return opt


def host_env() -> list[str]:
    """This process's environment as ``KEY=value`` items."""
    return [f"{k}={v}" for k, v in os.environ.items()]


# (major, minor) of the character devices every container may use; minor None = all.
_DEFAULT_DEVICES: tuple[tuple[int, int | None], ...] = (
    (1, 3),  # /dev/null
    (1, 8),  # /dev/random
    (1, 7),  # /dev/full
    (5, 0),  # /dev/tty
    (1, 5),  # /dev/zero
    (1, 9),  # /dev/urandom
    (5, 1),  # /dev/console
    (136, None),  # /dev/pts/*
    (5, 2),  # /dev/ptmx
)


def with_default_unix_devices(spec: Spec) -> None:
    """Allow the standard character devices in the device cgroup (containerd's
    ``WithDefaultUnixDevices``; runc creates the nodes themselves)."""
    devices = _linux(spec).setdefault("resources", {}).setdefault("devices", [])
    for major, minor in _DEFAULT_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        devices.append(rule)
