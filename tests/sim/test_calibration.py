"""Site calibration: CSV checks, training, the installed artefact, CLI and API."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.sim import Deployment, Workload, predict
from appliance.sim import calibration as cal
from appliance.sim.errors import SimInputError
from appliance.sim.measurements import Measurement, load_measurements
from appliance.sim.service import default_simulator, simulator_for
from tests.conftest import appliance_cmd
from tests.identity.conftest import sign_in

HEADER = "gpu,engine,model,tp,input_tokens,output_tokens,batch,e2e_s,ttft_s\n"
SLOWER = 2.0  # the site's H100 stack runs twice as slow as the shipped model predicts


def site_csv() -> str:
    """H100 vLLM rows at SLOWER x the shipped prediction (e2e and TTFT)."""
    lines = [HEADER]
    for model in ("llama-3-8b", "mistral-7b"):
        for batch in (1, 8, 32):
            for length in (256, 1024):
                work = Workload(length, length, batch)
                p = predict(model, Deployment(gpu="h100-sxm"), work, sim=default_simulator())
                lines.append(
                    f"h100-sxm,vllm,{model},1,{length},{length},{batch},"
                    f"{p.e2e_s * SLOWER:.4f},{p.ttft_ms / 1e3 * SLOWER:.4f}\n"
                )
    return "".join(lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu,engine,model\nh100-sxm,vllm,llama-3-8b\n", "header lacks input_tokens"),
        (HEADER.replace(",e2e_s,ttft_s", ""), "needs e2e_s or ttft_s"),
        (HEADER + "h100-sxm,vllm,llama-3-8b,1,128,128,abc,1.0,\n", "line 2: batch='abc'"),
        (HEADER + "h100-sxm,vllm,llama-3-8b,1,128,128,4,-1,\n", "line 2: e2e_s must be positive"),
        (HEADER + "h100-sxm,vllm,llama-3-8b,1,128,128,4,,\n", "line 2: needs e2e_s or ttft_s"),
        (HEADER + "h100-sxm,vllm,llama-3-8b,1,128,128,99999999,1.0,\n", "line 2: batch=99999999"),
        (HEADER + "b300,vllm,llama-3-8b,1,128,128,4,1.0,\n", "line 2: unknown GPU 'b300'"),
        (HEADER + "h100-sxm,vllm,my-model,1,128,128,4,1.0,\n", "line 2: unknown model"),
        (HEADER + "h100-sxm,triton,llama-3-8b,1,128,128,4,1.0,\n", "line 2: unknown engine"),
        (HEADER.rstrip() + ",colour\n", "unknown column(s) colour"),
        (HEADER, "no measurements"),
    ],
)
def test_bad_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(SimInputError) as err:
        cal.parse_csv(text)
    assert message in err.value.message


def test_site_rows_replace_the_shipped_rows_they_cover() -> None:
    shipped = load_measurements()
    site = cal.parse_csv(HEADER + "h100-sxm,trtllm,llama-3-8b,1,128,128,4,1.0,\n")
    merged = cal.merge(shipped, site)
    assert [m for m in merged if m.gpu == "h100-sxm" and m.e2e_s] == site
    # h100 TTFT rows stay (the site measured no TTFT); other GPUs are untouched
    assert any(m.gpu == "h100-sxm" and m.ttft_s for m in merged)
    assert sum(1 for m in merged if m.gpu == "a100-40g") == sum(
        1 for m in shipped if m.gpu == "a100-40g"
    )
    assert not any(m.gpu == "mi300x" for m in merged)  # NOT_TRAINED stays out


def test_calibration_moves_predictions_to_the_site(tmp_path: Path) -> None:
    rows = cal.parse_csv(site_csv())
    assert all(isinstance(m, Measurement) and m.source == "site" for m in rows)
    corr, report = cal.calibrate(rows, source=b"x")
    [acc] = report.accuracy
    assert acc.gpu == "h100-sxm" and acc.e2e_rows == len(rows) == acc.ttft_rows
    assert acc.e2e_shipped is not None and acc.e2e_shipped == pytest.approx(50.0, abs=1.0)
    assert acc.e2e_calibrated is not None and acc.e2e_calibrated < 20.0
    assert simulator_for(tmp_path) is default_simulator()
    cal.save(tmp_path, corr, report)
    sim = simulator_for(tmp_path)
    assert sim.calibration == report and sim.corrector is not None
    assert sim.corrector.meta.version.endswith("+site")
    # a configuration between the measured ones follows the site
    dep, work = Deployment(gpu="h100-sxm"), Workload(512, 512, 16)
    shipped = predict("llama-3-8b", dep, work, sim=default_simulator())
    site = predict("llama-3-8b", dep, work, sim=sim)
    assert 1.5 < site.e2e_s / shipped.e2e_s < 2.5
    # other GPU types keep their shipped behaviour
    a100 = Deployment(gpu="a100-40g")
    before = predict("llama-3-8b", a100, work, sim=default_simulator()).e2e_s
    assert predict("llama-3-8b", a100, work, sim=sim).e2e_s == pytest.approx(before, rel=0.25)
    assert cal.reset(tmp_path) and not cal.reset(tmp_path)
    assert simulator_for(tmp_path) is default_simulator()


def test_a_damaged_site_file_falls_back_to_the_shipped_regressor(tmp_path: Path) -> None:
    path = cal.site_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"meta": {"truncated')
    assert simulator_for(tmp_path) is default_simulator()


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir)}
    return subprocess.run(appliance_cmd("sim", *args), capture_output=True, text=True, env=env,
                          timeout=120)


def _predict_e2e(data_dir: Path) -> float:
    out = _cli("predict", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--input-tokens", "512",
               "--output-tokens", "512", "--batch", "16", "--json", data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    return float(json.loads(out.stdout)["e2e_s"])


def test_cli_calibrate_show_reset(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    before = _predict_e2e(data_dir)
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "h100-sxm,vllm,llama-3-8b,1,128,128,0,1.0,\n")
    out = _cli("calibrate", str(bad), data_dir=data_dir)
    assert out.returncode == 2 and "line 2: batch must be positive" in out.stderr
    assert _cli("calibrate", data_dir=data_dir).returncode == 2  # nothing to do
    good = tmp_path / "site.csv"
    good.write_text(site_csv())
    out = _cli("calibrate", str(good), data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    assert "h100-sxm" in out.stdout and "calibrated" in out.stdout
    assert 1.5 < _predict_e2e(data_dir) / before < 2.5
    shown = json.loads(_cli("calibrate", "--show", "--json", data_dir=data_dir).stdout)
    assert shown["active"] and shown["calibration"]["gpus"] == ["h100-sxm"]
    audit = _cli_audit(data_dir)
    assert "sim.calibrate" in audit
    out = _cli("calibrate", "--reset", data_dir=data_dir)
    assert out.returncode == 0 and "shipped" in out.stdout
    assert _predict_e2e(data_dir) == pytest.approx(before)
    assert "sim.calibration.reset" in _cli_audit(data_dir)


def _cli_audit(data_dir: Path) -> str:
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir)}
    out = subprocess.run(appliance_cmd("audit", "list"), capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_operator_calibrates_over_the_api(
    appliance: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", "admin-password-123")
    client: TestClient[Any, Any] = await appliance()
    admin = await sign_in(client, "admin", "admin-password-123")
    resp = await admin.call("POST", "/api/users", json={"username": "dev", "role": "developer",
                                                        "password": "persona-password-1"})
    assert resp.status == 201, await resp.text()
    body = {"model": "llama-3-8b", "gpu": "h100-sxm", "input_tokens": 512,
            "output_tokens": 512, "batch": 16}
    before = (await (await admin.call("POST", "/api/sim/predict", json=body)).json())["e2e_s"]
    status = await (await admin.call("GET", "/api/sim/calibration")).json()
    assert status == {"active": False, "calibration": None}

    csv_headers = {"Content-Type": "text/csv"}
    resp = await admin.call("POST", "/api/sim/calibration", data=HEADER + "x,y\n",
                            headers=csv_headers)
    assert resp.status == 400 and "line 2" in (await resp.json())["error"]["message"]
    resp = await admin.call("POST", "/api/sim/calibration", data=site_csv(), headers=csv_headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["calibration"]["gpus"] == ["h100-sxm"]
    after = (await (await admin.call("POST", "/api/sim/predict", json=body)).json())["e2e_s"]
    assert 1.5 < after / before < 2.5
    runs = await (await admin.call("GET", "/api/sim/runs?kind=predict&limit=1")).json()
    assert runs["runs"][0]["artefact"].endswith("+site")

    client.session.cookie_jar.clear()
    dev = await sign_in(client, "dev", "persona-password-1")
    assert (await dev.call("GET", "/api/sim/calibration")).status == 200
    resp = await dev.call("POST", "/api/sim/calibration", data=site_csv(), headers=csv_headers)
    assert resp.status == 403
    assert (await dev.call("DELETE", "/api/sim/calibration")).status == 403

    client.session.cookie_jar.clear()
    admin = await sign_in(client, "admin", "admin-password-123")
    resp = await admin.call("DELETE", "/api/sim/calibration")
    assert resp.status == 200 and (await resp.json())["active"] is False
    again = (await (await admin.call("POST", "/api/sim/predict", json=body)).json())["e2e_s"]
    assert again == pytest.approx(before)
    entries = await (await admin.call("GET", "/api/audit?limit=50")).json()
    actions = [e["action"] for e in entries]
    assert "sim.calibrate" in actions and "sim.calibration.reset" in actions
