"""Security scans of model files before they become visible.

* Pickle files (``.bin``/``.pt``/``.pth``/``.ckpt``/``.pkl``, PyTorch zip archives included)
  are read opcode by opcode with ``pickletools`` — never unpickled — and refused when they
  import anything that can run code (``os.system``, ``builtins.eval``, ``subprocess`` …).
* GGUF and safetensors headers are validated while their metadata is read (metadata.py).
* ClamAV's ``clamscan`` runs with the signature databases that bundles carry.
"""

from __future__ import annotations

import io
import pickletools
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from appliance.kernel.errors import ApplianceError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".th")
CLAMAV_SUFFIXES = (".cvd", ".cld", ".cud", ".hdb", ".hsb", ".hdu", ".hsu", ".mdb", ".msb",
                   ".ndb", ".ndu", ".ldb", ".ldu", ".idb", ".cdb", ".fp", ".sfp", ".ign",
                   ".ign2", ".ftm", ".yar", ".yara", ".pdb", ".wdb", ".cbc", ".crb", ".info")
MAX_PICKLES = 8
# modules and names whose import in a pickle can run code or reach the system
DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "socket",
                     "shutil", "pickle", "_pickle", "marshal", "ctypes", "webbrowser", "pty",
                     "code", "codeop", "commands", "multiprocessing", "asyncio", "requests",
                     "urllib", "http", "ftplib", "telnetlib", "smtplib", "pathlib", "io",
                     "tempfile", "signal", "threading", "_thread", "pip", "setuptools",
                     "operator", "functools", "types", "inspect", "dill", "cloudpickle")
DANGEROUS_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr",
                      "delattr", "globals", "locals", "vars", "input", "breakpoint", "apply",
                      "execfile", "file", "reload", "memoryview"}
SAFE_MODULES = ("torch", "numpy", "collections", "_codecs", "builtins", "__builtin__",
                "copy_reg", "copyreg", "transformers", "tokenizers", "sklearn", "scipy")


class ModelRefused(ApplianceError, ValueError):
    status = 422
    code = "model_refused"


def _dangerous(module: str, name: str) -> bool:
    root = module.split(".")[0]
    if root in ("builtins", "__builtin__"):
        return name in DANGEROUS_BUILTINS
    return root in DANGEROUS_MODULES


def _imports(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """The (module, name) of every global a pickle stream imports; stops at trailing data."""
    for count in range(MAX_PICKLES):
        memo: dict[int, Any] = {}
        stack: list[Any] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                name = op.name
                if name == "GLOBAL" or name == "INST":
                    module, _, attr = str(arg).partition(" ")
                    yield module, attr
                    stack.append(None)
                elif name == "STACK_GLOBAL":
                    top = stack.pop() if stack else None
                    below = stack.pop() if stack else None
                    if not isinstance(below, str) or not isinstance(top, str):
                        yield "<unresolved>", "<unresolved>"
                    else:
                        yield below, top
                    stack.append(None)
                elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                              "SHORT_BINSTRING", "BINSTRING", "STRING"):
                    stack.append(arg)
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(str(arg))] = stack[-1] if stack else None
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    stack.append(memo.get(int(str(arg))))
                elif name == "STOP":
                    break
                else:
                    stack.append(None)
                    if len(stack) > 64:
                        del stack[:32]
        except ValueError:
            if count == 0:
                raise
            return  # raw tensor data after the pickles (legacy torch.save)
        if not stream.read(1):
            return
        stream.seek(-1, io.SEEK_CUR)


def scan_pickle(path: Path, rel: str) -> list[dict[str, str]]:
    """Findings for one file that may hold pickles (empty when it is not a pickle)."""
    findings = []
    streams: list[tuple[str, IO[bytes]]] = []
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        streams = [(f"{rel}:{m}", io.BytesIO(archive.read(m))) for m in archive.namelist()
                   if m.endswith(".pkl")]
        archive.close()
    else:
        with path.open("rb") as f:
            if f.read(1) != b"\x80":  # PROTO: not a pickle (or protocol 0/1, not used)
                return []
        streams = [(rel, path.open("rb"))]
    for label, stream in streams:
        with stream:
            try:
                for module, attr in _imports(stream):
                    if module == "<unresolved>" or _dangerous(module, attr):
                        findings.append({"file": label, "severity": "dangerous",
                                         "import": f"{module}.{attr}"})
                    elif module.split(".")[0] not in SAFE_MODULES:
                        findings.append({"file": label, "severity": "unknown",
                                         "import": f"{module}.{attr}"})
            except ValueError as exc:
                findings.append({"file": label, "severity": "dangerous",
                                 "import": f"unparseable pickle: {exc}"})
    return findings


def scan_pickles(files: dict[str, Path]) -> dict[str, Any]:
    """Opcode scan of every pickle-capable file: clean, warnings, or refused."""
    findings: list[dict[str, str]] = []
    scanned = []
    for rel, path in sorted(files.items()):
        if rel.lower().endswith(PICKLE_SUFFIXES):
            scanned.append(rel)
            findings += scan_pickle(path, rel)
    status = "clean"
    if any(f["severity"] == "dangerous" for f in findings):
        status = "refused"
    elif findings:
        status = "warning"
    return {"status": status, "files": scanned, "findings": findings}


def clamscan(files: dict[str, Path], databases: dict[str, Path]) -> dict[str, Any]:
    """Run ``clamscan`` over the files with the given signature databases (by file name)."""
    binary = shutil.which("clamscan")
    if binary is None:
        return {"status": "unavailable", "detail": "clamscan is not installed "
                "(apt-get install clamav)"}
    if not databases:
        return {"status": "skipped", "detail": "no ClamAV signature databases imported yet"}
    with tempfile.TemporaryDirectory(prefix="appliance-clamav-") as tmp:
        # clamscan tells database kinds by file name: link each blob under its own name
        for name, path in databases.items():
            (Path(tmp) / Path(name).name).symlink_to(path)
        by_path = {str(path): rel for rel, path in files.items()}
        proc = subprocess.run(
            [binary, "--no-summary", "--infected", "--stdout", "--database", tmp,
             *by_path], capture_output=True, text=True, timeout=3600)
    found = []
    for line in proc.stdout.splitlines():
        match = re.match(r"^(.*): (.+) FOUND$", line)
        if match:
            found.append({"file": by_path.get(match.group(1), match.group(1)),
                          "signature": match.group(2)})
    if proc.returncode == 1 or found:
        return {"status": "infected", "found": found, "databases": sorted(databases)}
    if proc.returncode != 0:
        return {"status": "error", "detail": (proc.stderr or proc.stdout).strip()[-500:],
                "databases": sorted(databases)}
    return {"status": "clean", "databases": sorted(databases)}


def scan_model(name: str, files: dict[str, Path], databases: dict[str, Path]
               ) -> dict[str, Any]:
    """Every scan of one model; raise ModelRefused when it must not be imported."""
    pickles = scan_pickles(files)
    if pickles["status"] == "refused":
        bad = "; ".join(f"{f['file']} imports {f['import']}" for f in pickles["findings"]
                        if f["severity"] == "dangerous")
        raise ModelRefused(f"model {name} refused: {bad} (pickle that can run code)")
    clam = clamscan(files, databases)
    if clam["status"] == "infected":
        bad = "; ".join(f"{f['file']}: {f['signature']}" for f in clam["found"])
        raise ModelRefused(f"model {name} refused: ClamAV found {bad}")
    status = "clean" if pickles["status"] == "clean" and clam["status"] == "clean" else \
        "warning" if pickles["status"] == "warning" or clam["status"] == "error" else "passed"
    return {"status": status, "pickle": pickles, "clamav": clam, "headers": "valid"}
