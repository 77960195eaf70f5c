"""Model files from a Hugging Face repository (connected side): ``hf:ORG/REPO[@REV][#PATH]``.

The revision (a branch, tag or commit; default ``main``) is resolved to its commit through
``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`` (``sha`` and ``siblings``, each
with ``rfilename``, ``size`` and, for LFS files, ``lfs.sha256``). ``PATH`` picks one file, a
directory (ending in ``/``) or a glob (``*.gguf``, matched against the whole path); without it
the whole repository is taken except dotfiles (``.gitattributes``…) and images.

Each file comes from ``GET {endpoint}/{repo}/resolve/{commit}/{file}`` (redirects followed by
hand, so the token never leaves the endpoint's host) into
``~/.cache/foundry-appliance/sources/hf/ORG--REPO/COMMIT/FILE``, through a ``.partial`` file
that a later run (or a retry after a cut-off) resumes with ``Range``. Its size is checked, and
its sha256 for LFS files (from the listing, or the ``X-Linked-Etag`` header of the resolve
answer) or its git blob sha1 for the others (``blobId``); a mismatch discards the partial file.
``HF_ENDPOINT`` (default https://huggingface.co) and ``HF_TOKEN`` (bearer) are honoured.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import IO, Any

from appliance.kernel.errors import BadRequest

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1024 * 1024
TIMEOUT = 60
ATTEMPTS = 5  # tries per file when the connection is cut (each resumes where the last stopped)
MAX_REDIRECTS = 10
REPO_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
HEX40_RE = re.compile(r"^[0-9a-f]{40}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp", ".ico")


class HFFile:
    """One file of the repository at the resolved commit, with what the listing says of it."""

    def __init__(self, name: str, size: int | None, sha256: str, blob_id: str) -> None:
        self.name = name
        self.size = size
        self.sha256 = sha256  # LFS files
        self.blob_id = blob_id  # git blob sha1 (of the content for non-LFS files)


def parse_hf(rest: str) -> tuple[str, str, str]:
    """``ORG/REPO[@REV][#PATH]`` → (repo, revision, path)."""
    ref, _, path = rest.partition("#")
    repo, _, revision = ref.partition("@")
    if not REPO_RE.match(repo) or ".." in repo:
        raise BadRequest(f"source hf:{rest}: expected hf:ORG/REPO[@REVISION][#PATH]")
    if "@" in ref and not revision:
        raise BadRequest(f"source hf:{rest}: empty revision after @")
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        raise BadRequest(f"source hf:{rest}: bad path {path!r}")
    return repo, revision or "main", path


def default_selected(name: str) -> bool:
    """The whole-repository rule: everything but dotfiles / dot-directories and images."""
    parts = PurePosixPath(name).parts
    return not any(p.startswith(".") for p in parts) and not name.lower().endswith(
        IMAGE_SUFFIXES)


def select(files: list[HFFile], path: str) -> dict[str, HFFile]:
    """{path inside the model: file} for ``#PATH`` (or the default rule when empty)."""
    if not path:
        return {f.name: f for f in files if default_selected(f.name)}
    if path.endswith("/"):
        return {f.name[len(path):]: f for f in files if f.name.startswith(path)}
    if any(c in path for c in "*?["):
        return {f.name: f for f in files if fnmatch.fnmatchcase(f.name, path)}
    return {PurePosixPath(f.name).name: f for f in files if f.name == path}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # followed by hand: see HubClient.open


class HubClient:
    """GETs against the Hub endpoint: bearer token on its own host only, redirects by hand."""

    def __init__(self, endpoint: str = "", token: str = "") -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token or os.environ.get("HF_TOKEN", "")
        self.host = urllib.parse.urlsplit(self.endpoint).netloc
        self.opener = urllib.request.build_opener(_NoRedirect)

    def open(self, url: str, headers: dict[str, str] | None = None
             ) -> tuple[http.client.HTTPResponse, dict[str, str]]:
        """The final answer, and the headers of the first (the Hub's own, before a CDN)."""
        first: dict[str, str] | None = None
        for _ in range(MAX_REDIRECTS):
            req = urllib.request.Request(url, headers=dict(headers or {}))
            if self.token and urllib.parse.urlsplit(url).netloc == self.host:
                req.add_header("Authorization", f"Bearer {self.token}")
            try:
                resp = self.opener.open(req, timeout=TIMEOUT)
            except urllib.error.HTTPError as exc:
                if first is None:
                    first = {k.lower(): v for k, v in exc.headers.items()}
                if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                    url = urllib.parse.urljoin(url, exc.headers["Location"])
                    exc.close()
                    continue
                raise
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise BadRequest(f"cannot reach Hugging Face at {self.endpoint}: "
                                 f"{reason}") from None
            if first is None:
                first = {k.lower(): v for k, v in resp.headers.items()}
            return resp, first
        raise BadRequest(f"Hugging Face: too many redirects for {url}")

    def refusal(self, exc: urllib.error.HTTPError, repo: str, what: str) -> BadRequest:
        message = exc.headers.get("X-Error-Message", "")
        if not message:
            try:
                body = json.loads(exc.read(4096) or b"{}")
                message = str(body.get("error", "")) if isinstance(body, dict) else ""
            except (ValueError, OSError):
                message = ""
        detail = f" ({message})" if message else ""
        if exc.code in (401, 403):
            hint = ("HF_TOKEN is set but this token has no access; accept the model's terms "
                    "on its page or use another token" if self.token else
                    "set HF_TOKEN to a Hugging Face access token that can read it (and accept "
                    "the model's terms on its page)")
            return BadRequest(f"Hugging Face refused {what} of {repo}: HTTP {exc.code}{detail}; "
                              f"the repository is gated or private (or does not exist): {hint}")
        if exc.code == 404:
            return BadRequest(f"Hugging Face has no {what} for {repo} (unknown repository, "
                              f"revision or file{detail})")
        return BadRequest(f"Hugging Face: {what} of {repo}: HTTP {exc.code}{detail}")


def _listing(client: HubClient, repo: str, revision: str) -> tuple[str, list[HFFile]]:
    url = (f"{client.endpoint}/api/models/{repo}/revision/"
           f"{urllib.parse.quote(revision, safe='')}?blobs=true")
    try:
        resp, _ = client.open(url, {"Accept": "application/json"})
    except urllib.error.HTTPError as exc:
        raise client.refusal(exc, repo, f"the revision {revision!r}") from None
    with resp:
        try:
            body = json.loads(resp.read())
        except ValueError:
            raise BadRequest(f"Hugging Face: the listing of {repo}@{revision} is not "
                             "JSON") from None
    sha = body.get("sha", "") if isinstance(body, dict) else ""
    if not isinstance(sha, str) or not HEX40_RE.match(sha):
        raise BadRequest(f"Hugging Face: the listing of {repo}@{revision} names no commit")
    files: list[HFFile] = []
    for entry in body.get("siblings") or []:
        name = entry.get("rfilename", "") if isinstance(entry, dict) else ""
        if (not isinstance(name, str) or not name or name.startswith("/")
                or ".." in PurePosixPath(name).parts or "\\" in name):
            raise BadRequest(f"Hugging Face: {repo}@{sha} lists an unsafe file name {name!r}")
        lfs = entry.get("lfs") or {}
        size = lfs.get("size", entry.get("size")) if isinstance(lfs, dict) else None
        sha256 = str(lfs.get("sha256", "")).lower() if isinstance(lfs, dict) else ""
        blob_id = "" if lfs else str(entry.get("blobId", "")).lower()
        files.append(HFFile(name, size if isinstance(size, int) else None,
                            sha256 if HEX64_RE.match(sha256) else "",
                            blob_id if HEX40_RE.match(blob_id) else ""))
    return sha, files


def _etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def _hash_existing(path: Path, hashers: list[Any]) -> int:
    done = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            for h in hashers:
                h.update(block)
            done += len(block)
    return done


def _download(client: HubClient, repo: str, commit: str, item: HFFile, dest: Path) -> None:
    """Download one file to ``dest`` through ``dest.partial``, resuming and verifying."""
    partial = dest.with_name(dest.name + ".partial")
    url = (f"{client.endpoint}/{repo}/resolve/{commit}/"
           f"{urllib.parse.quote(item.name, safe='/')}")
    label = f"{repo}@{commit[:12]} {item.name}"
    for attempt in range(ATTEMPTS):
        have = partial.stat().st_size if partial.is_file() else 0
        size_note = f" ({item.size} bytes)" if item.size is not None else ""
        resume_note = f", resuming at byte {have}" if have else ""
        print(f"connected side: downloading {label}{size_note} from Hugging Face"
              f"{resume_note}", file=sys.stderr)
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp, first = client.open(url, headers)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and item.size is not None and have >= item.size:
                resp, first = None, {k.lower(): v for k, v in exc.headers.items()}
            else:
                raise client.refusal(exc, repo, f"the file {item.name!r}") from None
        size = item.size
        if size is None and first.get("x-linked-size", "").isdigit():
            size = int(first["x-linked-size"])
        sha256 = item.sha256 or (_etag(first.get("x-linked-etag", ""))
                                 if HEX64_RE.match(_etag(first.get("x-linked-etag", ""))) else "")
        blob_id = "" if sha256 else (item.blob_id or (
            _etag(first.get("etag", "")) if HEX40_RE.match(_etag(first.get("etag", "")))
            else ""))
        sha = hashlib.sha256()
        cut = False
        if resp is None:  # everything already there
            got = _hash_existing(partial, [sha])
        else:
            with resp:
                if resp.status == 206 and have:
                    mode = "ab"
                    got = _hash_existing(partial, [sha])
                else:
                    mode, got = "wb", 0  # the server ignored the Range: start over
                if size is None and resp.status == 200 and resp.length is not None:
                    size = resp.length
                with partial.open(mode) as out:
                    done, cut = _copy(resp, out, sha, limit=size)
                got += done
                cut = cut or (size is not None and got < size)
        if cut:
            if attempt + 1 < ATTEMPTS:
                continue
            raise BadRequest(f"Hugging Face: the download of {label} was cut off after "
                             f"{partial.stat().st_size} bytes; run again to resume")
        got = partial.stat().st_size
        problem = ""
        if size is not None and got != size:
            problem = f"size {got} bytes, expected {size}"
        elif sha256 and sha.hexdigest() != sha256:
            problem = f"sha256 {sha.hexdigest()}, expected {sha256}"
        elif blob_id:
            git = hashlib.sha1(f"blob {got}\0".encode(), usedforsecurity=False)
            _hash_existing(partial, [git])
            if git.hexdigest() != blob_id:
                problem = f"git blob {git.hexdigest()}, expected {blob_id}"
        if problem:
            partial.unlink(missing_ok=True)
            raise BadRequest(f"Hugging Face: {label} does not match ({problem}); the download "
                             "was discarded and refused")
        os.replace(partial, dest)
        return


def _copy(resp: http.client.HTTPResponse, out: IO[bytes], sha: Any, *, limit: int | None
          ) -> tuple[int, bool]:
    """Stream the body into ``out``: (bytes written, whether the connection was cut)."""
    done = 0
    while True:
        try:
            block = resp.read(CHUNK)
        except (http.client.HTTPException, ConnectionError, TimeoutError):
            return done, True
        if not block:
            return done, False
        sha.update(block)
        out.write(block)
        done += len(block)
        if limit is not None and done > limit:
            return done, False  # longer than announced: the size check refuses it


def resolve_hf(rest: str, cache: Path) -> dict[str, Path]:
    """{path inside the model: cached file} for ``hf:REST``, downloading what is missing."""
    repo, revision, path = parse_hf(rest)
    client = HubClient()
    commit, files = _listing(client, repo, revision)
    chosen = select(files, path)
    if not chosen:
        names = ", ".join(f.name for f in files[:20]) or "none"
        what = f"no file matching {path!r}" if path else "no files"
        raise BadRequest(f"Hugging Face: {repo}@{revision} ({commit[:12]}) has {what} "
                         f"(files: {names})")
    root = cache / "hf" / repo.replace("/", "--") / commit
    out: dict[str, Path] = {}
    for rel, item in sorted(chosen.items()):
        dest = root / item.name
        if not (dest.is_file() and (item.size is None or dest.stat().st_size == item.size)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            _download(client, repo, commit, item, dest)
        out[rel] = dest
    return out
