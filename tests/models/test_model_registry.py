"""Model registry: header metadata, licences, pickle and ClamAV scans, `models show`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from appliance.bundle.importer import import_bundle
from appliance.models.licences import by_text
from appliance.models.licences import detect as detect_licence
from appliance.models.metadata import HeaderInvalid, extract, read_gguf, read_safetensors
from appliance.models.scan import ModelRefused, scan_pickle
from appliance.store.state import open_sync
from tests.bundle.conftest import GGUF, MakeBundle
from tests.conftest import appliance_cmd

MARKER = b"FOUNDRY-TEST-MALWARE-MARKER-7f3a"


def _safetensors(tensors: dict[str, tuple[str, list[int]]], *, lie: int = 0) -> bytes:
    sizes = {"F32": 4, "F16": 2, "I64": 8}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * (offset - lie)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def _bert_dir(root: Path, extra: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8,
                                                  "max_position_embeddings": 512}))
    (root / "model.safetensors").write_bytes(_safetensors({"w": ("F32", [4, 8])}))
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def test_gguf_header() -> None:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"gguf-{os.getpid()}.gguf"
    tmp.write_bytes(GGUF)
    try:
        meta = read_gguf(tmp)
        assert meta["architecture"] == "llama" and meta["context_length"] == 2048
        assert meta["quantization"] == "Q4_1" and meta["parameter_count"] == 128
        assert meta["chat_template"] == "{{ messages }}" and meta["license"] == "apache-2.0"
        tmp.write_bytes(GGUF[:60])
        with pytest.raises(HeaderInvalid, match="ends early"):
            read_gguf(tmp)
        tmp.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**9, 1))
        with pytest.raises(HeaderInvalid, match="damaged"):
            read_gguf(tmp)
    finally:
        tmp.unlink()


def test_safetensors_header_and_config(tmp_path: Path) -> None:
    model = _bert_dir(tmp_path / "m")
    meta = extract({p.name: p for p in model.iterdir()})
    st = meta["safetensors"]["model.safetensors"]
    assert st["tensors"]["w"] == {"dtype": "F32", "shape": [4, 8]}
    assert meta["parameter_count"] == 32 and meta["context_length"] == 512
    assert meta["config"]["model_type"] == "llama"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_safetensors({"w": ("F32", [4, 8])}, lie=10))
    with pytest.raises(HeaderInvalid, match="outside the file"):
        read_safetensors(bad)
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(HeaderInvalid, match="claims"):
        read_safetensors(bad)


def test_licences(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("---\nlanguage: en\nlicense: cc-by-nc-4.0\n---\n# model\n")
    lic = detect_licence({"README.md": readme}, {})
    assert lic["id"] == "cc-by-nc-4.0" and lic["commercial_use"] is False
    assert lic["source"] == "README.md front matter"
    assert detect_licence({}, {"license": "apache-2.0"})["commercial_use"] is True
    text = tmp_path / "LICENSE"
    text.write_text("META LLAMA 3 COMMUNITY LICENSE AGREEMENT\nMeta Llama 3 Version ...")
    assert detect_licence({"LICENSE": text}, {})["id"] == "llama3"
    assert by_text("Permission is hereby granted, free of charge, to any person") is not None
    assert detect_licence({}, {"license": "my-own-terms"})["known"] is False
    assert detect_licence({}, {"license": "gemma"})["name"] == "Gemma Terms of Use"


def test_pickle_opcode_scan(tmp_path: Path) -> None:
    evil = tmp_path / "pytorch_model.bin"
    evil.write_bytes(pickle.dumps(_Evil(), protocol=4))
    assert any(f["import"] in ("posix.system", "os.system") and f["severity"] == "dangerous"
               for f in scan_pickle(evil, evil.name))
    from collections import OrderedDict

    ok = tmp_path / "ok.bin"
    ok.write_bytes(pickle.dumps(OrderedDict(a=1), protocol=2))
    assert scan_pickle(ok, ok.name) == []
    archive = tmp_path / "zipped.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Evil(), protocol=2))
    assert scan_pickle(archive, archive.name)[0]["severity"] == "dangerous"
    assert scan_pickle(tmp_path / "ok.bin", "x") == []
    not_pickle = tmp_path / "weights.bin"
    not_pickle.write_bytes(b"GGML" + bytes(100))
    assert scan_pickle(not_pickle, not_pickle.name) == []


def _count(data: Path) -> int:
    conn = open_sync(data)
    try:
        return int(conn.execute("SELECT count(*) FROM models").fetchone()[0])
    finally:
        conn.close()


def test_dangerous_pickle_refuses_the_import(make_bundle: MakeBundle, data_dir: Path,
                                             tmp_path: Path) -> None:
    model = _bert_dir(tmp_path / "evil-model",
                      {"pytorch_model.bin": pickle.dumps(_Evil(), protocol=4)})
    bundle = make_bundle(extra=f"""
[[models]]
name = "evil"
source = "file:{model}"
""")
    with pytest.raises(ModelRefused, match=r"evil refused: pytorch_model\.bin imports "
                       r"(posix|os)\.system"):
        import_bundle(data_dir, bundle)
    assert _count(data_dir) == 0


def test_damaged_gguf_header_refuses_the_import(make_bundle: MakeBundle, data_dir: Path
                                                ) -> None:
    bundle = make_bundle(model=GGUF[:40] + b"\xff" * 100)
    with pytest.raises(ModelRefused, match="my-local-model refused"):
        import_bundle(data_dir, bundle)
    assert _count(data_dir) == 0


def _clamav_extra(tmp_path: Path, model_dir: Path | None = None) -> str:
    if shutil.which("clamscan") is None:
        pytest.fail("clamscan is not installed; install it with `apt-get install -y clamav`")
    db = tmp_path / "clamav"
    db.mkdir(exist_ok=True)
    # a body signature (.ndb: name:target:offset:hex) and a hash signature (.hdb: md5:size:name)
    (db / "foundry-test.ndb").write_text(f"Foundry.Test.Marker:0:*:{MARKER.hex()}\n")
    evil_hash = b"hash-matched file\n"
    (db / "foundry-test.hdb").write_text(
        f"{hashlib.md5(evil_hash).hexdigest()}:{len(evil_hash)}:Foundry.Test.Hash\n")
    text = f"""
[[files]]
name = "clamav-db"
source = "file:{db}"
"""
    if model_dir is not None:
        text += f"""
[[models]]
name = "marked"
source = "file:{model_dir}"
"""
    return text


def test_clamav_with_bundled_signatures(make_bundle: MakeBundle, data_dir: Path,
                                        tmp_path: Path) -> None:
    marked = _bert_dir(tmp_path / "marked", {"notes.txt": b"data " + MARKER + b" more"})
    bundle = make_bundle(extra=_clamav_extra(tmp_path, marked))
    with pytest.raises(ModelRefused, match=r"ClamAV found notes\.txt: Foundry\.Test\.Marker"):
        import_bundle(data_dir, bundle)
    assert _count(data_dir) == 0
    # the same databases, a clean model: imported, the scan result is on the model row
    clean = make_bundle(extra=_clamav_extra(tmp_path))
    import_bundle(data_dir, clean)
    conn = open_sync(data_dir)
    scan = json.loads(conn.execute("SELECT scan FROM models").fetchone()[0])
    conn.close()
    assert scan["clamav"]["status"] == "clean"
    assert scan["clamav"]["databases"] == ["foundry-test.hdb", "foundry-test.ndb"]


def test_models_show(make_bundle: MakeBundle, data_dir: Path, tmp_path: Path) -> None:
    import_bundle(data_dir, make_bundle())
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    out = subprocess.run(appliance_cmd("models", "show", "my-local-model", "--data-dir",
                                       str(data_dir)), capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "architecture: llama" in out and "quantization: Q4_1" in out
    assert "licence: Apache License 2.0 (commercial use: yes" in out
    assert "scan: passed" in out or "scan: clean" in out
    data = json.loads(subprocess.run(
        appliance_cmd("models", "show", "my-local-model", "--data-dir", str(data_dir),
                      "--json"), capture_output=True, text=True, env=env, check=True).stdout)
    assert data["active"]["metadata"]["context_length"] == 2048
    missing = subprocess.run(appliance_cmd("models", "show", "nope", "--data-dir",
                                           str(data_dir)), capture_output=True, text=True,
                             env=env)
    assert missing.returncode == 1 and "no model named" in missing.stderr


