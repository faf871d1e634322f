"""The ``--report-json`` file: checked before serving, replaced atomically after.

The report is written to a temporary file in the target's own folder,
flushed to disk, and renamed over the target, so at every instant the path
holds a whole report (the previous one or the new one), whatever kills the
process. A symlink at the path is refused at startup (following it would
overwrite whatever it points to); a folder that cannot take the file is
found at startup too, not after the whole run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["ReportFile", "render"]

# Test hook: pause between writing the temporary file and renaming it, so a
# whole-process test can kill the process at exactly that point.
_PAUSE_ENV = "_TRIO_BACKGROUND_PAUSE_BEFORE_RENAME"


def render(data: Mapping[str, Any]) -> str:
    """``data`` as JSON, keys sorted, each item of a list on a line of its own.

    As readable as ``indent=2`` where it matters (one record a line), and
    written by json's C encoder item by item: ``indent`` makes json use its
    pure-Python encoder, about a quarter of a second for a report of 20,000
    cut tasks, which a shutdown at scale pays after its deadline.
    """
    encode = json.JSONEncoder(sort_keys=True).encode
    fields: list[str] = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, list) and value:
            items: list[Any] = value  # pyright: ignore[reportUnknownVariableType]
            text = "[\n" + ",\n".join("    " + encode(item) for item in items) + "\n  ]"
        else:
            text = encode(value)
        fields.append(f"  {encode(key)}: {text}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


class ReportFile:
    """Where the JSON report goes. Make one with :meth:`check`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def check(cls, path: Path) -> ReportFile:
        """Check now that a report can be written at ``path``.

        Raises:
            ValueError: The path is a symlink or a folder, or its folder is
                missing or not writable (the message says which).
        """
        if path.is_symlink():
            raise ValueError(
                f"--report-json {path} is a symlink (to {os.readlink(path)}); refusing to "
                "write through it: give the real path"
            )
        if path.is_dir():
            raise ValueError(f"--report-json {path} is a folder: give a file path in it")
        folder = path.parent
        if not folder.is_dir():
            raise ValueError(f"--report-json {path}: the folder {folder} does not exist")
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ValueError(
                f"--report-json {path}: cannot write in {folder} ({exc.strerror})"
            ) from None
        os.close(fd)
        os.unlink(probe)
        return cls(path)

    def write(self, text: str) -> None:
        """Replace the file's content with ``text``, atomically and durably."""
        folder = self.path.parent
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fchmod(file.fileno(), 0o644)
                os.fsync(file.fileno())
            if os.environ.get(_PAUSE_ENV):
                print(f"report: {temporary} written, paused before rename", file=sys.stderr)
                sys.stderr.flush()
                while True:  # until killed
                    signal.pause()
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
