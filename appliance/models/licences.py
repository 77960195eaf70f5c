"""Licence detection from a table of known licences, with a short summary of each.

Evidence, in order: a GGUF ``general.license`` key, the ``license:`` line of a model card's
front matter (``README.md``), then the text of a ``LICENSE`` file matched against each
licence's distinctive phrases. The summary is a reading aid, not legal advice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

MAX_TEXT = 256 * 1024


class Licence(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    commercial_use: bool
    redistribution: bool
    attribution: bool
    summary: str
    phrases: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


KNOWN: tuple[Licence, ...] = (
    Licence(id="apache-2.0", name="Apache License 2.0", commercial_use=True,
            redistribution=True, attribution=True,
            summary="Permissive: use, modify and redistribute, commercially too; keep the "
            "licence and NOTICE, state changes; patent grant.",
            phrases=("apache license", "version 2.0, january 2004")),
    Licence(id="mit", name="MIT License", commercial_use=True, redistribution=True,
            attribution=True, summary="Permissive: any use; keep the copyright notice.",
            phrases=("permission is hereby granted, free of charge",)),
    Licence(id="bsd-3-clause", name="BSD 3-Clause", commercial_use=True, redistribution=True,
            attribution=True, summary="Permissive: keep the notice; no endorsement using the "
            "authors' names.", phrases=("neither the name of the copyright holder",)),
    Licence(id="llama3", name="Meta Llama 3 Community License", commercial_use=True,
            redistribution=True, attribution=True,
            summary="Commercial use allowed below 700M monthly active users; show 'Built with "
            "Meta Llama 3'; acceptable use policy; derived model names start with 'Llama 3'.",
            phrases=("meta llama 3 community license",),
            aliases=("llama3.1", "llama3.2", "llama3.3", "llama-3", "llama 3")),
    Licence(id="llama2", name="Llama 2 Community License", commercial_use=True,
            redistribution=True, attribution=True,
            summary="Commercial use allowed below 700M monthly active users; acceptable use "
            "policy; include the licence when redistributing.",
            phrases=("llama 2 community license",)),
    Licence(id="gemma", name="Gemma Terms of Use", commercial_use=True, redistribution=True,
            attribution=True,
            summary="Commercial use allowed; the prohibited-use policy passes on to everyone "
            "downstream; redistribute with the terms and a notice.",
            phrases=("gemma terms of use",)),
    Licence(id="cc-by-4.0", name="Creative Commons Attribution 4.0", commercial_use=True,
            redistribution=True, attribution=True,
            summary="Any use, commercial too, with attribution and a link to the licence.",
            phrases=("creative commons attribution 4.0",)),
    Licence(id="cc-by-sa-4.0", name="Creative Commons Attribution-ShareAlike 4.0",
            commercial_use=True, redistribution=True, attribution=True,
            summary="Any use with attribution; adaptations under the same licence.",
            phrases=("attribution-sharealike 4.0",)),
    Licence(id="cc-by-nc-4.0", name="Creative Commons Attribution-NonCommercial 4.0",
            commercial_use=False, redistribution=True, attribution=True,
            summary="Non-commercial use only, with attribution.",
            phrases=("attribution-noncommercial 4.0",), aliases=("cc-by-nc",)),
    Licence(id="cc-by-nc-sa-4.0", name="Creative Commons Attribution-NonCommercial-ShareAlike "
            "4.0", commercial_use=False, redistribution=True, attribution=True,
            summary="Non-commercial use only, attribution, adaptations under the same licence.",
            phrases=("attribution-noncommercial-sharealike 4.0",)),
    Licence(id="openrail-m", name="Open RAIL-M", commercial_use=True, redistribution=True,
            attribution=True, summary="Use allowed subject to use-based restrictions that pass "
            "on to every downstream user.", phrases=("responsible ai license",),
            aliases=("openrail", "creativeml-openrail-m", "bigscience-openrail-m")),
    Licence(id="gpl-3.0", name="GNU GPL v3", commercial_use=True, redistribution=True,
            attribution=True, summary="Copyleft: redistributed copies and derivatives stay "
            "GPL-3.0 with source.", phrases=("gnu general public license", "version 3, 29 "
                                             "june 2007")),
)
_BY_ID = {lic.id: lic for lic in KNOWN} | {a: lic for lic in KNOWN for a in lic.aliases}
_FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---", re.S)
_LICENSE_LINE = re.compile(r"^license:\s*['\"]?([A-Za-z0-9.\- ]+?)['\"]?\s*$", re.M)
LICENSE_FILES = ("license", "license.md", "license.txt", "licence", "licence.md", "copying",
                 "notice")


def by_id(text: str) -> Licence | None:
    """A known licence from its SPDX-like id (``apache-2.0``, ``llama3``, ``cc-by-nc-4.0``)."""
    key = text.strip().lower()
    return _BY_ID.get(key) or _BY_ID.get(key.replace(" ", "-"))


def by_text(text: str) -> Licence | None:
    """The known licence whose distinctive phrases all occur in ``text``."""
    flat = " ".join(text.lower().split())
    for lic in KNOWN:
        if lic.phrases and all(p in flat for p in lic.phrases):
            return lic
    return None


def detect(files: Mapping[str, Path], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The model's licence with its summary, and where the evidence came from."""
    declared = str(metadata.get("license") or "")
    found: Licence | None = by_id(declared) if declared else None
    source = "gguf general.license" if found else ""
    names = {rel.lower(): rel for rel in files}
    if found is None and "readme.md" in names:
        text = files[names["readme.md"]].read_bytes()[:MAX_TEXT].decode(errors="replace")
        match = _FRONT_MATTER.match(text)
        line = _LICENSE_LINE.search(match.group(1)) if match else None
        if line:
            declared = declared or line.group(1)
            found = by_id(line.group(1))
            source = "README.md front matter"
    if found is None:
        for name in LICENSE_FILES:
            if name in names:
                text = files[names[name]].read_bytes()[:MAX_TEXT].decode(errors="replace")
                found = by_text(text)
                if found:
                    source = names[name]
                    break
    if found is None:
        return {"id": declared or "unknown", "known": False, "source": source,
                "summary": "Licence not recognised: check the model's terms before use."}
    return {"id": found.id, "name": found.name, "known": True, "source": source,
            "commercial_use": found.commercial_use, "redistribution": found.redistribution,
            "attribution": found.attribution, "summary": found.summary}
