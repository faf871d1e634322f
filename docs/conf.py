"""Sphinx configuration for the trio-background documentation.

The build must work offline and with warnings as errors (``-nW``): there is
no intersphinx, external projects are linked with ``extlinks`` or plain
links, and only names from other projects are excused from nitpicking, so
``-n`` still checks every reference to this library's own API.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import trio_background  # noqa: E402

project = "trio-background"
author = "trio-background contributors"
copyright = "2026, trio-background contributors"  # noqa: A001
release = trio_background.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.extlinks",
]

exclude_patterns = ["_build"]
nitpicky = True
default_role = "py:obj"

html_theme = "furo"
html_title = f"trio-background {release}"

# API reference ------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_custom_sections = ["Cancellation", "Error handling", "Nesting"]

# Names from other projects (and what autodoc makes of typing constructs)
# have no target without intersphinx. Our own names are not in this list.
nitpick_ignore_regex = [
    (r"py:.*", r"trio\..*"),
    (r"py:.*", r"hypercorn\..*"),
    (r"py:.*", r"httpx\..*"),
    (r"py:.*", r"starlette\..*"),
    (r"py:.*", r"fastapi\..*"),
    (r"py:.*", r"pytest\..*"),
    (r"py:.*", r"_pytest\..*"),
    (r"py:.*", r"(typing|collections\.abc|contextlib|enum|json)\..*"),
    (r"py:class", r"(str|int|float|bool|bytes|object|dict|list|tuple|type|None)"),
    (r"py:.*", r"(BaseException|Exception|TypeError|ValueError|RuntimeError)"),
]

# Links to the projects this one builds on ------------------------------------

extlinks = {
    "trio": ("https://trio.readthedocs.io/en/stable/%s", None),
    "hypercorn": ("https://hypercorn.readthedocs.io/en/latest/%s", None),
    "fastapi": ("https://fastapi.tiangolo.com/%s", None),
    "starlette": ("https://www.starlette.io/%s", None),
}
