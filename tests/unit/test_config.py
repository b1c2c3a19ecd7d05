import dataclasses
import tomllib
from pathlib import Path

import pytest

from pycontainerd import config
from pycontainerd.cli.daemon import default_config_table, main
from pycontainerd.errdefs import InvalidArgument


def test_defaults_parse_from_empty_v2() -> None:
    cfg = config.parse("version = 2\n")
    assert cfg == config.Config()


def test_fields_are_decoded() -> None:
    cfg = config.parse(
        """
        version = 2
        root = "/r"
        state = "/s"
        disabled_plugins = ["io.containerd.grpc.v1.version"]
        [grpc]
          address = "/x.sock"
          uid = 5
          gid = 6
        [debug]
          level = "debug"
          format = "json"
        [plugins."io.containerd.metadata.v1.sqlite"]
        """
    )
    assert (cfg.root, cfg.state) == ("/r", "/s")
    assert cfg.grpc.address == "/x.sock" and (cfg.grpc.uid, cfg.grpc.gid) == (5, 6)
    assert cfg.debug.level == "debug"
    assert cfg.disabled_plugins == ["io.containerd.grpc.v1.version"]
    assert cfg.plugins == {"io.containerd.metadata.v1.sqlite": {}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2\nrot = '/x'\n", "config rot: unknown key"),
        ("version = 2\n[grpc]\nadress = 'x'\n", "config grpc.adress: unknown key"),
        ("version = 2\n[grpc]\nuid = 'root'\n", "config grpc.uid: expected an integer"),
        ("version = 2\ndisabled_plugins = 'x'\n", "config disabled_plugins: expected an array"),
        ("version = 1\n", "unsupported config version 1"),
        ("root = '/x'\n", "unsupported config version 1"),
        ("version = 2\n[grpc\n", "config:"),
        (
            "version = 2\n[grpc]\ntcp_address = '0.0.0.0:1'\n",
            "grpc.tcp_address: serving gRPC over TCP",
        ),
    ],
)
def test_strict_errors_name_the_path(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        config.parse(text)
    assert message in str(info.value)


def test_plugin_section_decoding_is_strict() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Sched:
        pause_threshold: float = 0.02
        schedule_delay: str = "0ms"

    got = config.decode(Sched, {"pause_threshold": 1}, 'plugins."gc"')
    assert got == Sched(pause_threshold=1.0)
    with pytest.raises(InvalidArgument, match=r'plugins\."gc"\.pause: unknown key'):
        config.decode(Sched, {"pause": 1}, 'plugins."gc"')


def test_default_config_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out
    table = tomllib.loads(text)
    assert table == default_config_table()
    cfg = config.parse(text)
    assert cfg.version == 2 and cfg.grpc.address == config.DEFAULT_ADDRESS


def test_dumps_quotes_keys_and_strings() -> None:
    text = config.dumps({"a": 'x"y', "plugins": {"io.x.y": {"k": [1, 2], "b": True}}})
    assert tomllib.loads(text) == {"a": 'x"y', "plugins": {"io.x.y": {"k": [1, 2], "b": True}}}
    assert '[plugins."io.x.y"]' in text


def test_flags_override_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text('version = 2\nroot = "/from/file"\nstate = "/s"\n')
    assert (
        main(["--config", str(path), "--root", "/from/flag", "-a", "/a.sock", "config", "dump"])
        == 0
    )
    table = tomllib.loads(capsys.readouterr().out)
    assert table["root"] == "/from/flag"
    assert table["state"] == "/s"
    assert table["grpc"]["address"] == "/a.sock"


def test_bad_config_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("version = 2\n[grpc]\nadress = 'x'\n")
    assert main(["--config", str(path), "config", "dump"]) == 1
    assert "config grpc.adress: unknown key" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml"), "config", "dump"]) == 1
    assert "No such file" in capsys.readouterr().err
