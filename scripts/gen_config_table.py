"""Rewrite the settings table in docs/configuration.md from the SETTINGS table.

    python3 scripts/gen_config_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_inference_gateway.settings import markdown_table  # noqa: E402

DOCS = ROOT / "docs" / "configuration.md"


def main() -> None:
    """Replace the table (from its header row to the first line after it that is no row)."""
    lines = DOCS.read_text().splitlines()
    start = lines.index("| Variable | Default | Meaning |")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    DOCS.write_text("\n".join([*lines[:start], markdown_table(), *lines[end:]]) + "\n")


if __name__ == "__main__":
    main()
