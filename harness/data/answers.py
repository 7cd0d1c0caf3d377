"""Answer extraction: the answer inside a generation or a reference, compared by exact match and verifiable rewards."""

from __future__ import annotations

import re


def extract_answer(text: str, pattern: str | None) -> str:
    """The pattern's last match (group 1 if any; a number loses its thousands commas), else the first line."""
    if pattern:
        matches = list(re.finditer(pattern, text))
        if not matches:
            return ""
        last = matches[-1]
        value = (last.group(1) if last.groups() else last.group(0)).strip()
        return value.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", value) else value
    lines = text.strip().splitlines()
    return lines[0].strip().strip(".'\"` ") if lines else ""
