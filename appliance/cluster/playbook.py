"""Playbooks: declarative steps in YAML (``playbooks/*.yaml``), rendered with Jinja2.

A step is one of

- ``run``: a shell command (``read_only: true`` for commands that only look: they run in
  dry-run too and report ``ok``); ``facts: PARSER`` turns its output into host facts;
- ``upload``: ``{src, dest, mode}`` a local file copied over SFTP, verified by sha256 there;
- ``template``: ``{dest, content | src, mode}`` a Jinja2 template rendered here and written;
- ``check``: a Jinja2 expression over ``facts`` and ``vars`` that must hold
  (``severity: warn`` makes a failure a warning).

Guards make every step idempotent: ``when`` (expression; false → skipped), ``creates`` (path on
the host; present → ok, not run), ``unless`` (command; exit 0 → ok, not run); uploads and
templates compare digests first. ``loop`` repeats a step over a list (``item`` in templates).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import yaml
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.environment import TemplateExpression
from jinja2.sandbox import SandboxedEnvironment

from appliance.kernel.errors import BadRequest, NotFound

PLAYBOOK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class PlaybookError(BadRequest):
    code = "playbook_error"


class UploadSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    src: str
    dest: str
    mode: str = "0644"


class TemplateSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dest: str
    content: str | None = None
    src: str | None = None
    mode: str = "0644"


class Step(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    run: str | None = None
    upload: UploadSpec | None = None
    template: TemplateSpec | None = None
    check: str | None = None
    read_only: bool = False
    facts: str | None = None
    register: str | None = None
    when: str | None = None
    creates: str | None = None
    unless: str | None = None
    loop: str | None = None
    message: str | None = None
    severity: Literal["error", "warn"] = "error"
    sudo: bool = True
    timeout_s: float | None = None
    ignore_errors: bool = False

    @property
    def kind(self) -> str:
        kinds = [k for k in ("run", "upload", "template", "check") if getattr(self, k)]
        return kinds[0]


class Playbook(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    description: str = ""
    vars: dict[str, Any] = {}
    requires: list[str] = []  # vars the caller must give
    steps: list[Step]
    source: str = ""


def default_playbooks_dir() -> Path:
    """``playbooks/`` next to the package (checkout) or inside the frozen bundle."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "playbooks"
    return Path(__file__).resolve().parent.parent.parent / "playbooks"


def _check_steps(book: Playbook) -> None:
    seen: set[str] = set()
    for i, step in enumerate(book.steps):
        where = f"{book.name}: step {i + 1} ({step.name!r})"
        kinds = [k for k in ("run", "upload", "template", "check") if getattr(step, k)]
        if len(kinds) != 1:
            raise PlaybookError(f"{where} needs exactly one of run, upload, template, check; "
                                f"has {', '.join(kinds) or 'none'}")
        if step.name in seen:
            raise PlaybookError(f"{where}: step names must be unique")
        seen.add(step.name)
        if step.template and bool(step.template.content is None) == bool(step.template.src is None):
            raise PlaybookError(f"{where}: a template needs content or src, not both")
        if (step.facts or step.register) and not step.run:
            raise PlaybookError(f"{where}: facts/register need a run step")
        for spec in (step.upload, step.template):
            if spec is not None and not re.match(r"^0?[0-7]{3,4}$", spec.mode):
                raise PlaybookError(f"{where}: mode {spec.mode!r} is not octal")


def parse_playbook(text: str, *, name: str, source: str = "") -> Playbook:
    """Parse and validate one playbook document."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlaybookError(f"playbook {name}: not valid YAML: {exc}") from None
    try:
        book = msgspec.convert(raw, Playbook)
    except msgspec.ValidationError as exc:
        raise PlaybookError(f"playbook {name}: {exc}") from None
    book.source = source
    _check_steps(book)
    return book


def load_playbook(name: str, directory: Path | None = None) -> Playbook:
    """The playbook ``name`` (``playbooks/NAME.yaml``)."""
    if not PLAYBOOK_NAME_RE.match(name):
        raise PlaybookError(f"playbook name {name!r} is not valid")
    directory = directory or default_playbooks_dir()
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise NotFound(f"no playbook {name!r} in {directory} (known: {known})",
                       param="playbook")
    return parse_playbook(path.read_text(), name=name, source=str(path))


def list_playbooks(directory: Path | None = None) -> list[Playbook]:
    directory = directory or default_playbooks_dir()
    return [load_playbook(p.stem, directory) for p in sorted(directory.glob("*.yaml"))]


_T = TypeVar("_T")


class Renderer:
    """Jinja2 in a sandbox with strict undefined: a typo in a playbook fails loudly.

    Templates and expressions are compiled once per renderer, not once per use: compiling is
    ~1-3 ms of CPU on the event loop, and a run renders the same ~20 strings on every host.
    """

    CACHE_SIZE = 1024

    def __init__(self, playbooks_dir: Path) -> None:
        self.dir = playbooks_dir
        self.env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True,
                                        autoescape=False)
        self.env.filters["shquote"] = _shquote
        self.env.filters["to_yaml"] = lambda v: yaml.safe_dump(v, sort_keys=False)
        self.env.filters["to_json"] = lambda v: msgspec.json.encode(v).decode()
        self._templates: dict[str, Template] = {}
        self._expressions: dict[str, TemplateExpression] = {}

    def text(self, template: str, ctx: dict[str, Any]) -> str:
        try:
            compiled = self._templates.get(template)
            if compiled is None:
                compiled = _remember(self._templates, template,
                                     self.env.from_string(template), self.CACHE_SIZE)
            return compiled.render(**ctx)
        except TemplateError as exc:
            raise PlaybookError(f"cannot render {template[:80]!r}: {exc}") from None

    def expr(self, expression: str, ctx: dict[str, Any]) -> Any:
        try:
            compiled = self._expressions.get(expression)
            if compiled is None:
                compiled = _remember(
                    self._expressions, expression,
                    self.env.compile_expression(expression, undefined_to_none=False),
                    self.CACHE_SIZE)
            return compiled(**ctx)
        except TemplateError as exc:
            raise PlaybookError(f"cannot evaluate {expression!r}: {exc}") from None

    def template_file(self, src: str, ctx: dict[str, Any]) -> str:
        path = (self.dir / "templates" / src).resolve()
        if not path.is_relative_to(self.dir.resolve()) or not path.is_file():
            raise PlaybookError(f"template {src!r} not found under {self.dir / 'templates'}")
        return self.text(path.read_text(), ctx)


def _remember(cache: dict[str, _T], key: str, value: _T, limit: int) -> _T:
    if len(cache) >= limit:
        del cache[next(iter(cache))]  # the oldest; playbooks are a few hundred strings
    cache[key] = value
    return value


def _shquote(value: Any) -> str:
    import shlex

    return shlex.quote(str(value))
