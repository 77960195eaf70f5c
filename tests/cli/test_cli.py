"""Every command has --help; the state-changing commands work on a data dir with --json."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from appliance.cli import build_parser, main


def _commands() -> list[list[str]]:
    """Every command and sub-command path of the parser."""
    import argparse

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*path, name])
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c))
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: appliance " + " ".join(command))
    assert len(out.splitlines()) > 3


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_keys_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["keys", "create", *data, "--name", "app", "--models", "a,b", "--rpm", "5",
                 "--json"]) == 0
    created = _json(capsys)
    assert isinstance(created, dict) and created["key"].startswith("sk-fa-")
    assert main(["keys", "list", *data, "--json"]) == 0
    listed = _json(capsys)
    assert isinstance(listed, list) and listed[0]["models"] == ["a", "b"]
    assert "key" not in listed[0] and "secret_hash" not in listed[0]
    assert main(["keys", "revoke", created["id"], *data]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *data, "--json"]) == 0
    assert _json(capsys) == []
    assert main(["keys", "revoke", "key_nope", *data]) != 0
    assert "no API key" in capsys.readouterr().err
    assert main(["keys", "create", *data, "--name", "x", "--rpm", "0"]) == 2


def test_routes_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["routes", "add", "m", "--targets", "ghost", *data]) == 2
    assert "names no upstream" in capsys.readouterr().err
    assert main(["routes", "add-upstream", "gpu-a", "--base-url", "http://10.0.0.5:8000/v1",
                 "--api-key", "secret", *data]) == 0
    assert main(["routes", "add", "m", "--targets", "gpu-a", "--fallback", "small", *data]) == 0
    capsys.readouterr()
    assert main(["routes", "list", *data, "--json"]) == 0
    routes = _json(capsys)
    assert isinstance(routes, list)
    assert routes[0]["targets"] == ["gpu-a"] and routes[0]["fallback"] == ["small"]
    assert main(["routes", "upstreams", *data, "--json"]) == 0
    ups = _json(capsys)
    assert isinstance(ups, list) and "secret" not in json.dumps(ups)
    assert main(["routes", "remove-upstream", "gpu-a", *data]) == 2
    assert "used by route" in capsys.readouterr().err
    assert main(["routes", "remove", "m", *data]) == 0
    assert main(["routes", "remove-upstream", "gpu-a", *data]) == 0


def test_bundle_create_import_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))  # a valid, empty GGUF v3
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "b"\nversion = "1"\n[[models]]\nname = "m"\n'
                      f'source = "file:{model}"\n')
    assert main(["bundle", "create", str(recipe), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    data = ["--data-dir", str(tmp_path / "d")]
    assert main(["bundle", "import", str(tmp_path / "out"), *data, "--json",
                 "--allow-unsigned"]) == 0
    assert _json(capsys)["models"] == ["m"]  # type: ignore[index]
    assert main(["models", "list", *data, "--json"]) == 0
    assert _json(capsys)[0]["name"] == "m"  # type: ignore[index]
    assert main(["bundle", "import", str(tmp_path / "nowhere"), *data]) != 0
