"""OCI platforms: parsing, normalisation and containerd's default matching.

A platform is ``os/architecture[/variant]``. Names are normalised as containerd does
(``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``, ``armhf`` -> ``arm/v7`` …) so that two
spellings of one platform compare equal. The default matcher accepts what a host can run:
an ``amd64/v3`` host runs ``v3``, ``v2`` and ``v1`` (no variant) images and ``386``; an
``arm64`` host runs ``arm/v8`` down to ``arm/v5``; earlier entries are preferred (``less``).
"""

from __future__ import annotations

import platform as _host
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from pycontainerd.errdefs import InvalidArgument

_COMPONENT = re.compile(r"^[A-Za-z0-9_.-]+$")

_KNOWN_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "windows",
        "zos",
    ]
)
_KNOWN_ARCH = frozenset(
    [
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "ppc64",
        "ppc64le",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    ]
)

# x86-64 micro-architecture levels (psABI): the CPU flags each level adds.
_AMD64_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("v2", frozenset(["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"])),
    ("v3", frozenset(["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"])),
    ("v4", frozenset(["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"])),
)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def platform_of(obj: Mapping[str, object]) -> Platform:
    """The platform of an OCI descriptor's ``platform`` object or an image config."""
    features = obj.get("os.features")
    return Platform(
        str(obj.get("os", "")),
        str(obj.get("architecture", "")),
        str(obj.get("variant", "")),
        str(obj.get("os.version", "")),
        tuple(str(f) for f in features) if isinstance(features, list) else (),
    )


def normalize_os(os_name: str) -> str:
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's normalisation of an architecture and its variant."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    arch, variant = normalize_arch(p.architecture, p.variant)
    return Platform(normalize_os(p.os), arch, variant, p.os_version, p.os_features)


def format_platform(p: Platform) -> str:
    return str(p)


def parse_platform(s: str) -> Platform:
    """Parse ``os[/arch[/variant]]`` (or a lone architecture) into a normalised Platform.

    Raises:
        InvalidArgument: a wildcard, an empty or malformed component, an unknown lone
            os/architecture, or more than three components.
    """
    if "*" in s:
        raise InvalidArgument(f"{s!r}: wildcards not yet supported")
    parts = s.split("/")
    for part in parts:
        if not _COMPONENT.match(part):
            raise InvalidArgument(
                f"{part!r} is an invalid component of {s!r}: "
                f"platform specifier component must match {_COMPONENT.pattern!r}"
            )
    host = default_platform()
    if len(parts) == 1:
        os_name = normalize_os(parts[0])
        if os_name in _KNOWN_OS:
            variant = host.variant if host.architecture == "arm" else ""
            return Platform(os_name, host.architecture, variant)
        arch, variant = normalize_arch(parts[0], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        if arch in _KNOWN_ARCH:
            return Platform(host.os, arch, variant)
        raise InvalidArgument(f"{s!r}: unknown operating system or architecture")
    if len(parts) == 2:
        arch, variant = normalize_arch(parts[1], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        return Platform(normalize_os(parts[0]), arch, variant)
    if len(parts) == 3:
        arch, variant = normalize_arch(parts[1], parts[2])
        if arch == "arm64" and variant == "":
            variant = "v8"
        return Platform(normalize_os(parts[0]), arch, variant)
    raise InvalidArgument(f"{s!r}: cannot parse platform specifier")


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def amd64_level(flags: frozenset[str]) -> str:
    """The x86-64 micro-architecture level ("v1" … "v4") that ``flags`` reach."""
    level = "v1"
    for name, needed in _AMD64_LEVELS:
        if not needed <= flags:
            break
        level = name
    return level


def _arm_variant() -> str:
    machine = _host.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "v8"
    for v in ("8", "7", "6", "5"):
        if machine.startswith(f"armv{v}"):
            return "v" + v
    return ""


@cache
def default_platform() -> Platform:
    """This host's platform, with the CPU variant as containerd's default spec has it."""
    arch, _ = normalize_arch(_host.machine() or "amd64", "")
    variant = ""
    if arch == "amd64":
        variant = amd64_level(_cpu_flags())
    elif arch == "arm":
        variant = _arm_variant()
    return Platform(normalize_os(_host.system() or "linux"), arch, variant)


def platform_vector(p: Platform) -> list[Platform]:
    """``p`` and, in order of preference, the platforms a ``p`` host also runs."""
    vector = [p]
    if p.architecture == "amd64":
        level = _variant_number(p.variant)
        for n in range(level - 1, 0, -1):
            vector.append(Platform(p.os, "amd64", f"v{n}", p.os_version, p.os_features))
        vector.append(Platform(p.os, "386", "", p.os_version, p.os_features))
    elif p.architecture == "arm":
        level = _variant_number(p.variant)
        for n in range(level - 1, 4, -1):
            vector.append(Platform(p.os, "arm", f"v{n}", p.os_version, p.os_features))
    elif p.architecture == "arm64":
        vector.extend(platform_vector(Platform(p.os, "arm", p.variant or "v8")))
    return vector


def _variant_number(variant: str) -> int:
    try:
        return int(variant.removeprefix("v"))
    except ValueError:
        return 0


def _key(p: Platform) -> tuple[str, str, str]:
    n = normalize(p)
    return n.os, n.architecture, n.variant


class Matcher:
    """containerd's default platform matching.

    With no platforms, the host's (``default_platform()``); otherwise any of the given
    ones, each with what it runs (``amd64/v2`` accepts ``amd64`` images). ``less(a, b)``
    is true when ``a`` is preferred over ``b``: the earlier in this order.
    """

    def __init__(self, platforms: Sequence[Platform] | None = None) -> None:
        wanted = list(platforms) if platforms else [default_platform()]
        order: list[tuple[str, str, str]] = []
        for p in wanted:
            for candidate in platform_vector(normalize(p)):
                key = _key(candidate)
                if key not in order:
                    order.append(key)
        self._order = order

    def _rank(self, p: Platform) -> int:
        try:
            return self._order.index(_key(p))
        except ValueError:
            return len(self._order)

    def match(self, p: Platform) -> bool:
        return _key(p) in self._order

    def less(self, a: Platform, b: Platform) -> bool:
        return self._rank(a) < self._rank(b)
