"""``python -m durably``: the command line (see ``_cli`` and docs/operations.md)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
