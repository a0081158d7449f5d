"""``client/PROTOCOL.md``'s byte examples, read from the document itself.

Every example in the document's "Byte examples" section is a line starting ``->`` (a request) or
``<-`` (a reply) followed by its bytes in hex. ``tests/unit/test_protocol_doc.py`` checks each one
against what the code encodes; the fuzzers (``tests/fuzz``) start their corpora from them.
"""

from __future__ import annotations

import re
from pathlib import Path

PROTOCOL_MD = Path(__file__).resolve().parents[1] / "client" / "PROTOCOL.md"
HEX_LINE = re.compile(r"^\s+[0-9a-f]{2}( +[0-9a-f]{2})*\s*$")


def documented_examples() -> dict[str, bytes]:
    """Each ``->``/``<-`` line of the "Byte examples" section (without the arrow), and the bytes under it."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text.split("## Byte examples", 1)[1].split("\n## ", 1)[0]
    examples: dict[str, bytes] = {}
    heading = ""
    for block in re.findall(r"```\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith(("->", "<-")):
                heading = line[2:].strip()
                assert heading not in examples, f"two examples are both headed {heading!r}"
                examples[heading] = b""
            elif HEX_LINE.match(line):
                examples[heading] += bytes.fromhex(line)
    return examples


def documented_requests() -> list[bytes]:
    """The encoded request frames among the examples (the ``->`` lines), in document order."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    requests = {line[2:].strip() for line in text.splitlines() if line.startswith("->")}
    return [encoded for heading, encoded in documented_examples().items() if heading in requests]
