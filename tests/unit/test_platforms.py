"""Platform parsing, normalisation and containerd's default matching."""

from __future__ import annotations

import pytest

from pycontainerd.errdefs import InvalidArgument
from pycontainerd.images import platforms as pl
from pycontainerd.images.platforms import Matcher, Platform, parse_platform


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm", Platform("linux", "arm")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/armhf", Platform("linux", "arm")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("macos/arm64", Platform("darwin", "arm64")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_parse_normalises_as_containerd(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


def test_parse_lone_os_or_arch_uses_host() -> None:
    host = pl.default_platform()
    assert parse_platform("linux").os == "linux"
    assert parse_platform("linux").architecture == host.architecture
    assert parse_platform("arm64") == Platform(host.os, "arm64")


@pytest.mark.parametrize("text", ["", "linux/*", "linux//amd64", "linux/amd64/v1/x", "nope", "a b"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_platform(text)


def test_str_round_trips() -> None:
    for text in ("linux/amd64", "linux/arm64/v8", "linux/arm/v6", "windows/amd64"):
        assert str(parse_platform(text)) == text


def test_amd64_levels_from_cpu_flags() -> None:
    v2 = frozenset(["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"])
    v3 = v2 | frozenset(["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"])
    v4 = v3 | frozenset(["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"])
    assert pl.amd64_level(frozenset()) == "v1"
    assert pl.amd64_level(v2) == "v2"
    assert pl.amd64_level(v3) == "v3"
    assert pl.amd64_level(v4) == "v4"
    # a gap at v3 stops there even with v4 flags
    assert (
        pl.amd64_level(v2 | frozenset(["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]))
        == "v2"
    )


def test_default_platform_is_this_host() -> None:
    host = pl.default_platform()
    assert host.os == "linux"
    if host.architecture == "amd64":
        assert host.variant in ("v1", "v2", "v3", "v4")


def test_amd64_v2_host_runs_v1_and_v2_not_v3() -> None:
    m = Matcher([Platform("linux", "amd64", "v2")])
    assert m.match(Platform("linux", "amd64"))
    assert m.match(Platform("linux", "amd64", "v1"))
    assert m.match(Platform("linux", "amd64", "v2"))
    assert m.match(Platform("linux", "386"))
    assert not m.match(Platform("linux", "amd64", "v3"))
    assert not m.match(Platform("linux", "arm64"))
    assert not m.match(Platform("windows", "amd64"))


def test_amd64_prefers_the_highest_level_it_runs() -> None:
    m = Matcher([Platform("linux", "amd64", "v3")])
    v1, v2, v3 = (Platform("linux", "amd64", v) for v in ("", "v2", "v3"))
    assert m.less(v3, v2) and m.less(v2, v1)
    assert m.less(v1, Platform("linux", "386"))
    assert not m.less(v1, v3)
    # an unmatched platform sorts last
    assert m.less(Platform("linux", "386"), Platform("linux", "arm64"))


def test_arm64_host_runs_arm_variants() -> None:
    m = Matcher([parse_platform("linux/arm64")])
    assert m.match(Platform("linux", "arm64"))
    assert m.match(Platform("linux", "arm64", "v8"))
    for v in ("v8", "v7", "v6", "v5"):
        assert m.match(Platform("linux", "arm", v))
    assert m.match(Platform("linux", "arm"))  # arm without variant is v7
    assert m.less(Platform("linux", "arm64"), Platform("linux", "arm", "v7"))
    assert not m.match(Platform("linux", "amd64"))


def test_arm_v6_does_not_run_v7() -> None:
    m = Matcher([parse_platform("linux/arm/v6")])
    assert m.match(Platform("linux", "arm", "v5"))
    assert not m.match(Platform("linux", "arm", "v7"))


def test_default_matcher_matches_host() -> None:
    host = pl.default_platform()
    assert Matcher().match(host)
    assert Matcher().match(Platform(host.os, host.architecture))


def test_several_platforms_keep_their_order() -> None:
    m = Matcher([parse_platform("linux/arm64"), parse_platform("linux/amd64")])
    assert m.match(Platform("linux", "amd64"))
    assert m.less(Platform("linux", "arm64"), Platform("linux", "amd64"))
