"""An app module that fails on import, for the CLI's error test."""

from __future__ import annotations

import os


def database_url() -> str:
    return os.environ["TRIO_BACKGROUND_TEST_NO_SUCH_VARIABLE"]


DATABASE_URL = database_url()
