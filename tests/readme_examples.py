"""The example messages of the README's "Wire contract" section, as the bytes an app would send."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def wire_examples() -> list[bytes]:
    """Each ```json block of the section, in order, as UTF-8 bytes."""
    text = README.read_text()
    section = text[text.index("## Wire contract\n"):]
    section = section[:section.index("\n## ", 1)]
    return [block.encode() for block in re.findall(r"```json\n(.*?)\n```", section, flags=re.DOTALL)]
