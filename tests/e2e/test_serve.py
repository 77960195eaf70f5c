"""The real thing: `appliance serve` with the starter models, driven over HTTP and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ServerProcess, appliance_cmd, create_key, free_port, spawn_server

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


def _post(url: str, body: dict, key: str, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_chat_completion_from_the_starter_model(live_server: ServerProcess, live_key: str) -> None:
    status, body = _post(live_server.url + "/v1/chat/completions", {
        "model": CHAT_MODEL, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}, live_key)
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["model"] == CHAT_MODEL
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0


def test_openai_client_streams_and_lists_models(live_server: ServerProcess,
                                                live_key: str) -> None:
    import openai

    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key=live_key)
    ids = {m.id for m in client.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids
    stream = client.chat.completions.create(
        model=CHAT_MODEL, max_tokens=20, stream=True,
        messages=[{"role": "user", "content": "Count from one to five."}])
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 3
    assert "".join(pieces).strip()
    completion = client.completions.create(model=CHAT_MODEL, prompt="Once upon a time",
                                           max_tokens=8)
    assert completion.choices[0].text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])


def test_embeddings_separate_meanings(live_server: ServerProcess, live_key: str) -> None:
    texts = ["A man is playing a guitar.", "Someone is playing an instrument.",
             "The stock market fell sharply today."]
    status, body = _post(live_server.url + "/v1/embeddings",
                         {"model": EMBED_MODEL, "input": texts}, live_key)
    assert status == 200, body
    vecs = np.array([d["embedding"] for d in body["data"]])
    assert vecs.shape == (3, 384)
    sim = vecs @ vecs.T
    assert sim[0, 1] > 0.5
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert body["usage"]["prompt_tokens"] > 0


def test_responses_endpoint_with_local_model(live_server: ServerProcess, live_key: str) -> None:
    status, body = _post(live_server.url + "/v1/responses", {
        "model": CHAT_MODEL, "input": "Say hello.", "max_output_tokens": 10}, live_key)
    assert status == 200, body
    assert body["object"] == "response"
    assert body["output"][0]["content"][0]["text"]


def test_cli_key_changes_apply_to_running_server(live_server: ServerProcess) -> None:
    key = create_key(live_server.data_dir, "--models", CHAT_MODEL)
    listed = subprocess.run(appliance_cmd("keys", "list", "--data-dir", str(live_server.data_dir),
                                          "--json"), capture_output=True, text=True, check=True)
    key_id = next(k["id"] for k in json.loads(listed.stdout) if k["prefix"] == key[:10])
    body = {"model": CHAT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    assert _post(live_server.url + "/v1/chat/completions", body, key)[0] == 200
    subprocess.run(appliance_cmd("keys", "revoke", key_id, "--data-dir",
                                 str(live_server.data_dir)), check=True, capture_output=True)
    deadline = time.monotonic() + 5
    status = 200
    while time.monotonic() < deadline and status == 200:
        status, err = _post(live_server.url + "/v1/chat/completions", body, key)
        time.sleep(0.2)
    assert status == 401
    assert err["error"]["code"] == "revoked_api_key"


def test_metrics_and_usage(live_server: ServerProcess, live_key: str) -> None:
    with urllib.request.urlopen(live_server.url + "/metrics") as resp:
        text = resp.read().decode()
    assert f'appliance_engine_up{{model="{CHAT_MODEL}"}} 1' in text
    _post(live_server.url + "/v1/chat/completions", {
        "model": CHAT_MODEL, "max_tokens": 2,
        "messages": [{"role": "user", "content": "x"}]}, live_key)
    time.sleep(1)
    req = urllib.request.Request(live_server.url + "/api/usage?window=1h&group_by=model",
                                 headers={"Authorization": f"Bearer {live_key}"})
    with urllib.request.urlopen(req) as resp:
        usage = json.loads(resp.read())
    row = next(r for r in usage["rows"] if r["group"] == CHAT_MODEL)
    assert row["requests"] >= 1 and row["latency_ms_p50"] > 0


# --- servers of their own ----------------------------------------------------------------------


def _engine_pid(server: ServerProcess, key: str, model: str = CHAT_MODEL) -> int:
    req = urllib.request.Request(server.url + "/api/engines",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as resp:
        engines = json.loads(resp.read())
    engine = next(e for e in engines if e["name"] == model)
    return int(engine["pid"]) if engine["pid"] else 0


def test_route_example_fails_over_to_starter_model(tmp_path: Path,
                                                   starter_bundle: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f"""
[[upstreams]]
name = "gpu-a"
kind = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"

[[routes]]
model = "llama-3-8b"
targets = ["gpu-a"]
fallback = ["smollm2-135m-instruct"]
""")
    server = spawn_server(tmp_path / "data", config=config, starter=starter_bundle)
    try:
        key = create_key(server.data_dir)
        status, body = _post(server.url + "/v1/chat/completions", {
            "model": "llama-3-8b", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hello"}]}, key)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]
    finally:
        assert server.stop() == 0


def test_engine_killed_is_restarted(tmp_path: Path, starter_bundle: Path) -> None:
    server = spawn_server(tmp_path / "data", starter=starter_bundle,
                          env={"APPLIANCE_ENGINE__HEALTH_INTERVAL_S": "0.5"})
    try:
        key = create_key(server.data_dir, "--admin")
        pid = _engine_pid(server, key)
        assert pid
        os.kill(pid, signal.SIGKILL)
        body = {"model": CHAT_MODEL, "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hi"}]}
        # during the gap: a clean 503 (or success once it is back), never a hang or a 500
        status, err = _post(server.url + "/v1/chat/completions", body, key)
        assert status in (200, 502, 503), err
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, _ = _post(server.url + "/v1/chat/completions", body, key)
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200
        new_pid = _engine_pid(server, key)
        assert new_pid and new_pid != pid
    finally:
        assert server.stop() == 0


def test_sigterm_drains_an_open_stream(tmp_path: Path, starter_bundle: Path) -> None:
    server = spawn_server(tmp_path / "data", starter=starter_bundle)
    key = create_key(server.data_dir)
    received: list[bytes] = []
    started = threading.Event()

    def stream() -> None:
        req = urllib.request.Request(
            server.url + "/v1/chat/completions", method="POST", data=json.dumps({
                "model": CHAT_MODEL, "max_tokens": 60, "stream": True, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me a story about a cat."}]
            }).encode(), headers={"Authorization": f"Bearer {key}",
                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            for line in resp:
                received.append(line)
                started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(60)
    server.proc.send_signal(signal.SIGTERM)
    reader.join(120)
    assert server.proc.wait(60) == 0, server.logs()
    assert received[-2].strip() == b"data: [DONE]" or received[-1].strip() == b"data: [DONE]"
    assert "stopped cleanly" in server.logs()


def test_config_errors_exit_2_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = "127.0.0.1:9"\n[gateway]\nretriez = 3\n')
    out = subprocess.run(appliance_cmd("serve", "--config", str(bad), "--data-dir",
                                       str(tmp_path / "d")), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "retriez" in out.stderr


def test_second_instance_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    server = spawn_server(tmp_path / "data", starter=tmp_path / "none")
    try:
        out = subprocess.run(appliance_cmd("serve", "--data-dir", str(server.data_dir),
                                           "--listen", f"127.0.0.1:{free_port()}"),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert "in use by pid" in out.stderr
    finally:
        assert server.stop() == 0
