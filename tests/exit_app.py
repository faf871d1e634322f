"""tests.cli_app's app, plus an atexit handler (as an exporter's flush would be)."""

from __future__ import annotations

import atexit
import sys

from .cli_app import app


@atexit.register
def flush_exporter() -> None:
    print("atexit handler ran", file=sys.stderr, flush=True)


__all__ = ["app"]
