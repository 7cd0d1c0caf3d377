"""Prompt templating: a prompt built from several source columns, a dialogue split into prompt and answers."""

from __future__ import annotations

import os
import string
from typing import Any


def template_fields(template: str | None) -> list[str]:
    """The column names a template refers to (``{instruction}``, ``{input}``)."""
    return [field for _, field, _, _ in string.Formatter().parse(template or "") if field]


def fill(template: str, row: dict[str, Any]) -> str:
    """The template with each field filled; a paragraph whose fields are all empty is left out."""
    paragraphs = []
    for paragraph in template.split("\n\n"):
        fields = template_fields(paragraph)
        if fields and all(not str(row.get(f) or "").strip() for f in fields):
            continue
        paragraphs.append(paragraph.format(**{f: row.get(f) or "" for f in fields}))
    return "\n\n".join(paragraphs)


def split_shared_prompt(chosen: str, rejected: str, marker: str) -> dict[str, str]:
    """Dialogues stored whole (Anthropic HH: ``...\n\nAssistant: answer``) split into the shared
    prompt, up to and including the last ``marker`` both share, and the two answers after it."""
    common = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(marker, 0, common + 1)
    if cut < 0:
        return {"prompt": "", "chosen": chosen, "rejected": rejected}
    end = cut + len(marker)
    return {"prompt": chosen[:end].strip(), "chosen": chosen[end:].strip(), "rejected": rejected[end:].strip()}


def as_text(value: Any) -> Any:
    """A completion given as a conversation (UltraFeedback) becomes its last assistant message."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return next((m["content"] for m in reversed(value) if m.get("role") == "assistant"), value[-1]["content"])
    return value
