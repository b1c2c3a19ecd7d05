"""pyctr run / containers / tasks: argument parsing and the spec options flags ask for."""

from __future__ import annotations

import pytest

from pycontainerd.cli import ctr_run
from pycontainerd.cli.pyctr import parser
from pycontainerd.errdefs import InvalidArgument
from pycontainerd.oci import spec as oci


def test_parse_mount() -> None:
    m = ctr_run.parse_mount("type=bind,src=/tmp,dst=/host,options=rbind:ro")
    assert m == {
        "type": "bind",
        "source": "/tmp",
        "destination": "/host",
        "options": ["rbind", "ro"],
    }
    with pytest.raises(InvalidArgument, match="no destination"):
        ctr_run.parse_mount("type=bind,src=/tmp")
    with pytest.raises(InvalidArgument, match="unknown key"):
        ctr_run.parse_mount("type=bind,dst=/x,size=1")
    with pytest.raises(InvalidArgument):
        ctr_run.parse_mount("bind")


def test_parse_labels() -> None:
    assert ctr_run.parse_labels(["a=1", "b=", "c", "d=x=y"]) == {
        "a": "1",
        "b": "",
        "c": "",
        "d": "x=y",
    }


def test_run_arguments_and_spec(tmp_path: object) -> None:
    args = parser().parse_args(
        [
            "run",
            "--rm",
            "--env",
            "A=1",
            "--mount",
            "type=bind,src=/srv,dst=/data,options=rbind",
            "--net-host",
            "--tty",
            "--cwd",
            "/w",
            "--cap-add",
            "CAP_SYS_ADMIN",
            "--cap-drop",
            "CAP_KILL",
            "img",
            "id1",
            "sh",
            "-c",
            "echo -n hi",
        ]
    )
    assert (args.image, args.id, args.args) == ("img", "id1", ["sh", "-c", "echo -n hi"])
    assert args.rm and args.tty
    spec = oci.generate_spec("ns", "id1", *ctr_run.spec_opts(args))
    assert "A=1" in spec["process"]["env"] and "TERM=xterm" in spec["process"]["env"]
    assert spec["process"]["cwd"] == "/w"
    assert any(m["destination"] == "/data" for m in spec["mounts"])
    assert "network" not in [n["type"] for n in spec["linux"]["namespaces"]]
    caps = spec["process"]["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" in caps and "CAP_KILL" not in caps


def test_tasks_and_containers_parsers() -> None:
    p = parser()
    a = p.parse_args(["tasks", "exec", "--exec-id", "e1", "-t", "c1", "ls", "-l"])
    assert (a.exec_id, a.tty, a.id, a.args) == ("e1", True, "c1", ["ls", "-l"])
    a = p.parse_args(["t", "kill", "-s", "KILL", "-a", "c1"])
    assert (a.signal, a.all) == ("KILL", True)
    a = p.parse_args(["task", "rm", "-f", "c1", "c2"])
    assert a.force and a.ids == ["c1", "c2"]
    a = p.parse_args(["c", "rm", "--keep-snapshot", "c1"])
    assert a.keep_snapshot and a.ids == ["c1"]
    a = p.parse_args(["containers", "ls", "--format", "json", "image==x"])
    assert a.format == "json" and a.filters == ["image==x"]
    with pytest.raises(SystemExit):
        p.parse_args(["tasks", "exec", "c1", "ls"])  # --exec-id is required
