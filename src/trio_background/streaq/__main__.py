"""``python -m trio_background.streaq worker MODULE:BACKEND``: run durable tasks.

Exit status: 0 after an orderly stop (the report says what happened to each
task), 2 for bad arguments or a backend that cannot be loaded.
"""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
