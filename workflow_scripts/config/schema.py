"""Write config.schema.json from the config dataclasses: ``python -m workflow_scripts.config.schema``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from workflow_scripts.config.loader import config_schema


def main() -> int:
    target = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "config.schema.json"
    )
    target.write_text(json.dumps(config_schema(), indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
