"""Bundle import rate and registry blob download rate, against the machine's own baselines.

1. Import of a synthetic multi-GB bundle (verify sha256 while copying into the content store,
   fsync per blob) vs ``cat FILE | tee COPY | sha256sum`` over the same blob files.
2. Download of one large blob from the appliance's ``/v2/`` vs the Debian ``docker-registry``
   (distribution) serving the same blob from its filesystem storage; both fetched with curl.

Usage: ``python bench/import_rate.py [--gib 2] [--blob-gib 1] [--rounds 3]``.
Prints a table and a one-line summary. Needs ``curl`` and ``docker-registry`` (Debian).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.bundle.create import create_bundle  # noqa: E402
from appliance.bundle.importer import import_bundle  # noqa: E402
from appliance.bundle.recipe import load_recipe  # noqa: E402

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_file(path: Path, size: int, seed: int) -> None:
    """Incompressible-looking data without paying for os.urandom on every byte."""
    block = bytearray(os.urandom(8 * MIB))
    with path.open("wb") as f:
        written = 0
        n = 0
        while written < size:
            block[:16] = hashlib.md5(f"{seed}-{n}".encode()).digest()
            chunk = bytes(block[: min(len(block), size - written)])
            f.write(chunk)
            written += len(chunk)
            n += 1


def make_layout(root: Path, layer: Path) -> None:
    """A one-layer OCI layout whose layer is ``layer`` (the registry serves it as a blob)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    digest = hashlib.file_digest(layer.open("rb"), "sha256").hexdigest()
    os.link(layer, blobs / digest) if layer.stat().st_dev == blobs.stat().st_dev else \
        shutil.copy(layer, blobs / digest)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cdig = hashlib.sha256(config).hexdigest()
    (blobs / cdig).write_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{cdig}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{digest}", "size": layer.stat().st_size}]}).encode()
    mdig = hashlib.sha256(manifest).hexdigest()
    (blobs / mdig).write_bytes(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{mdig}",
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "big"}}]}))


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def baseline(files: list[Path], out: Path) -> float:
    def run() -> None:
        for f in files:
            subprocess.run(f"cat '{f}' | tee '{out / f.name}' | sha256sum > /dev/null",
                           shell=True, check=True)
    took = timed(run)
    shutil.rmtree(out)
    out.mkdir()
    return took


def curl_rate(url: str) -> float:
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{speed_download}", url],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def push_blob(base: str, repo: str, path: Path, digest: str) -> None:
    """Monolithic blob upload to a distribution registry (POST, then PUT with the digest)."""
    req = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(req) as resp:
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    # -T streams the file (--data-binary would load all of it into memory first)
    subprocess.run(["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                    "-T", str(path), f"{location}{sep}digest={digest}"],
                   check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0, help="bundle size (GiB)")
    ap.add_argument("--blob-gib", type=float, default=1.0, help="registry blob size (GiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    for tool in ("curl", "docker-registry"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y curl docker-registry", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-import-", dir=os.environ.get("BENCH_TMP")))
    rows: list[tuple[str, str, str]] = []
    try:
        src = tmp / "src"
        src.mkdir()
        total = int(args.gib * 1024**3)
        n_files = 4
        for i in range(n_files):
            synthetic_file(src / f"part{i}.bin", total // n_files, i)
        layer = tmp / "layer.bin"
        synthetic_file(layer, int(args.blob_gib * 1024**3), 99)
        layout = tmp / "layout"
        make_layout(layout, layer)
        recipe = tmp / "r.toml"
        recipe.write_text(f'name = "bench"\nversion = "1"\n[[files]]\nname = "data"\n'
                          f'source = "file:{src}"\n[[images]]\nname = "bench/big:1"\n'
                          f'source = "oci-layout:{layout}:big"\n')
        bundle = tmp / "usb" / "bundle"
        create_bundle(load_recipe(recipe), bundle)
        blob_files = [p for p in (bundle / "blobs" / "sha256").iterdir()
                      if p.stat().st_size > MIB]
        nbytes = sum(p.stat().st_size for p in blob_files)
        copies = tmp / "copies"
        copies.mkdir()
        base_t, imp_t = [], []
        for r in range(args.rounds):
            base_t.append(baseline(blob_files, copies))
            data = tmp / f"data{r}"
            imp_t.append(timed(lambda d=data: import_bundle(d, bundle, allow_unsigned=True)))
            if r < args.rounds - 1:
                shutil.rmtree(data)
        b_rate, i_rate = nbytes / min(base_t) / 1e6, nbytes / min(imp_t) / 1e6
        rows.append((f"cat | tee copy | sha256sum ({nbytes / 1e9:.2f} GB)", f"{b_rate:,.0f}",
                     "1.00x"))
        rows.append(("appliance bundle import (verify + copy + fsync)", f"{i_rate:,.0f}",
                     f"{i_rate / b_rate:.2f}x"))

        # --- registry blob download -------------------------------------------------------------
        digest = "sha256:" + hashlib.file_digest(layer.open("rb"), "sha256").hexdigest()
        data = tmp / f"data{args.rounds - 1}"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        env.update(APPLIANCE_ENGINE__ENABLED="false", APPLIANCE_AUTH__REQUIRED="false",
                   APPLIANCE_STARTER_BUNDLE=str(tmp / "none"))
        server = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--data-dir",
                                   str(data), "--listen", f"127.0.0.1:{port}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rport = free_port()
        (tmp / "registry.yml").write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {tmp / 'registry'}\nhttp:\n  addr: 127.0.0.1:{rport}\n")
        registry = subprocess.Popen(["docker-registry", "serve", str(tmp / "registry.yml")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/")
            wait_http(f"http://127.0.0.1:{rport}/v2/")
            push_blob(f"http://127.0.0.1:{rport}", "bench/big", layer, digest)
            ours = f"http://127.0.0.1:{port}/v2/bench/big/blobs/{digest}"
            theirs = f"http://127.0.0.1:{rport}/v2/bench/big/blobs/{digest}"
            r_ours, r_theirs = [], []
            for _ in range(args.rounds):
                r_theirs.append(curl_rate(theirs))
                r_ours.append(curl_rate(ours))
            size = layer.stat().st_size / 1e9
            t, o = max(r_theirs) / 1e6, max(r_ours) / 1e6
            rows.append((f"docker-registry GET blob ({size:.2f} GB, curl)", f"{t:,.0f}",
                         "1.00x"))
            rows.append(("appliance /v2/ GET blob (sendfile)", f"{o:,.0f}", f"{o / t:.2f}x"))
        finally:
            for proc in (server, registry):
                proc.terminate()
                proc.wait(30)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'MB/s':>8}  {'vs base':>7}")
    for name, rate, ratio in rows:
        print(f"{name:<{width}}  {rate:>8}  {ratio:>7}")
    imp_ratio = float(rows[1][2][:-1])
    reg_ratio = float(rows[3][2][:-1])
    print(f"summary: import {imp_ratio:.2f}x of cat|tee|sha256sum (goal >= 0.9), registry "
          f"blob download {reg_ratio:.2f}x of docker-registry (goal >= 1.0); best of "
          f"{args.rounds} rounds, warm page cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
