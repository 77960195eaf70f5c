from __future__ import annotations

from pathlib import Path

import pytest

from appliance.kernel.errors import ConfigError
from appliance.settings import load_settings

EXAMPLE = """
[[upstreams]]
name = "gpu-a"
kind = "openai"
base_url = "http://127.0.0.1:9001/v1"

[[routes]]
model = "llama-3-8b"
targets = ["gpu-a"]
fallback = ["smollm2-135m-instruct"]
"""


def test_issue_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(EXAMPLE)
    settings = load_settings(path, environ={})
    assert settings.routes[0].fallback == ["smollm2-135m-instruct"]
    assert settings.upstreams[0].base_url == "http://127.0.0.1:9001/v1"


def test_env_overrides_file_and_converts_types(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('listen = "127.0.0.1:1"\n[engine]\nthreads = 4\n')
    settings = load_settings(path, environ={"APPLIANCE_LISTEN": "0.0.0.0:9000",
                                            "APPLIANCE_ENGINE__THREADS": "2",
                                            "APPLIANCE_AUTH__REQUIRED": "false"})
    assert settings.host_port == ("0.0.0.0", 9000)
    assert settings.engine.threads == 2
    assert settings.auth.required is False


@pytest.mark.parametrize(("text", "env", "needle"), [
    ("bogus = 1", {}, "bogus"),
    ("[gateway]\nretriez = 1", {}, "retriez"),
    ("", {"APPLIANCE_NOPE": "1"}, "nope"),
    ("[engine]\nthreads = 'many'", {}, "threads"),
    ("listen = 'nohost'", {}, "listen"),
    ("[[routes]]\nmodel = 'x'\ntargets = ['ghost']", {}, "ghost"),
    ("[[upstreams]]\nname='a'\nbase_url='ftp://x'", {}, "base_url"),
    ("not toml [", {}, "not valid TOML"),
])
def test_bad_settings_are_rejected_with_the_reason(tmp_path: Path, text: str,
                                                   env: dict[str, str], needle: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env)
    assert needle in info.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
