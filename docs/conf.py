"""Sphinx configuration for the trio-background documentation.

The build must work offline and with warnings as errors (``-nW``): there is
no intersphinx, external projects are linked with ``extlinks`` or plain
links, and only names from other projects are excused from nitpicking, so
``-n`` still checks every reference to this library's own API.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import trio_background  # noqa: E402

if TYPE_CHECKING:
    from docutils.nodes import Element, TextElement
    from sphinx.addnodes import pending_xref
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

project = "trio-background"
author = "trio-background contributors"
copyright = "2026, trio-background contributors"
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
# Attribute types are in the class signature; the field list keeps to prose.
napoleon_attr_annotations = False
napoleon_custom_sections = ["Cancellation", "Error handling", "Nesting"]

# Names from other projects have no target without intersphinx: excuse
# them, and the ParamSpec parts that autodoc writes into add_task's
# signature. Builtins need no entry (Sphinx knows them), and our own names
# are not here, so -n still checks every reference to this library.
nitpick_ignore_regex = [
    (r"py:.*", r"trio\..*"),
    (r"py:.*", r"hypercorn\..*"),
    (r"py:.*", r"httpx\..*"),
    (r"py:.*", r"starlette\..*"),
    (r"py:.*", r"fastapi\..*"),
    (r"py:.*", r"quart(_trio)?\..*"),
    (r"py:.*", r"pytest\..*"),
    (r"py:.*", r"(streaq|coredis)\..*"),
    # StreaqBackend.task(func: F) -> F, F a TypeVar of any callable.
    (r"py:class", r"trio_background\.streaq\._backend\.F"),
    (r"py:class", r"trio_background\.celery\._backend\.F"),  # CeleryBackend.task, the same
    (r"py:class", r"trio_background\._policy\.F"),  # trio_background.task, the same
    (r"py:.*", r"(typing|collections\.abc|contextlib)\..*"),
    (r"py:.*", r"(prometheus_client|opentelemetry)\..*"),
    # add_task(func: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs)
    (r"py:class", r"P(\.args|\.kwargs)?"),
]

# Links to the projects this one builds on ------------------------------------

extlinks = {
    "trio": ("https://trio.readthedocs.io/en/stable/%s", None),
    "hypercorn": ("https://hypercorn.readthedocs.io/en/latest/%s", None),
    "fastapi": ("https://fastapi.tiangolo.com/%s", None),
    "starlette": ("https://www.starlette.io/%s", None),
}


# Making signatures resolvable ----------------------------------------------


def _our_modules() -> list[Any]:
    modules = [trio_background]
    for info in pkgutil.walk_packages(trio_background.__path__, "trio_background."):
        if not info.name.endswith("__main__"):
            modules.append(importlib.import_module(info.name))
    return modules


def _import_type_checking_names() -> None:
    """Run each module's ``if TYPE_CHECKING:`` imports into the module.

    The library uses ``from __future__ import annotations`` and imports
    names it needs only for annotations under ``TYPE_CHECKING``; autodoc
    evaluates annotations in the module's namespace, where those names are
    missing, and would otherwise leave unresolvable strings in signatures.
    This only affects the documentation build's own process.
    """
    for module in _our_modules():
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                imports = [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
                code = compile(ast.Module(body=imports, type_ignores=[]), module.__file__, "exec")
                exec(code, vars(module))


_import_type_checking_names()

_PARAM_SPECS = {
    name
    for module in _our_modules()
    for name, value in vars(module).items()
    if isinstance(value, ParamSpec)
}

# Aliases whose expansion would swamp a signature; api.rst documents them.
autodoc_type_aliases = {
    "ASGIApp": "trio_background._middleware.ASGIApp",
    "ErrorHook": "trio_background._runner.ErrorHook",
}

# Classes that users get from a factory rather than construct.
_NO_CONSTRUCTOR_SIGNATURE = {
    "trio_background.testing.BackgroundClient",
    "trio_background.testing.LiveServer",
}


def _fix_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    if what == "class" and name in _NO_CONSTRUCTOR_SIGNATURE:
        return "", None
    if signature is None:
        return None
    # A dataclass field(default_factory=...) shows as "<factory>", which is
    # not Python: Sphinx could not parse the signature to link its types.
    fixed = signature.replace("<factory>", "...")
    # Sphinx names an alias of autodoc_type_aliases inside a union by its
    # placeholder's repr ("TypeAliasForwardRef('...') | None"); name it.
    fixed = re.sub(r"TypeAliasForwardRef\('([\w.]+)'\)", r"~\1", fixed)
    # ...and by its full name elsewhere: show the short name, as for classes.
    for alias in autodoc_type_aliases.values():
        fixed = re.sub(rf"(?<![~\w.]){re.escape(alias)}", f"~{alias}", fixed)
    # A ParamSpec comes out as "Callable[[~P], R]" and "*args: ~typing.~P",
    # which is not Python either; write it the way the source does.
    for name in _PARAM_SPECS:
        fixed = fixed.replace(f"[[~{name}]", f"[{name}")
        fixed = fixed.replace(f"*args: ~typing.~{name}", f"*args: {name}.args")
        fixed = fixed.replace(f"**kwargs: ~typing.~{name}", f"**kwargs: {name}.kwargs")
    return fixed, return_annotation


def _skip_namedtuple_fields(
    app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    # A NamedTuple's fields are documented in its Attributes section; their
    # own docstrings only say "Alias for field number N".
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def _public_target(target: str, module: str | None) -> list[str]:
    """Public names a reference into a private module may mean.

    Annotations name the defining module (``trio_background._tasks.BackgroundTask``),
    the reference documents the public one (``trio_background.BackgroundTask``).
    A short name in a submodule's docstring may mean a name of the package.
    """
    candidates = []
    parts = target.split(".")
    if parts[0] == "trio_background":
        public = [p for p in parts[:-1] if not p.startswith("_")] + parts[-1:]
        if public != parts:
            candidates.append(".".join(public))
    elif module is not None and module.startswith("trio_background."):
        candidates.append(f"trio_background.{target}")
    return candidates


def _resolve_private(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> Element | None:
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for target in _public_target(node["reftarget"], node.get("py:module")):
        retry = node.deepcopy()
        retry["reftarget"] = target
        resolved = domain.resolve_xref(
            env, node.get("refdoc", ""), app.builder, node["reftype"], target, retry, contnode
        )
        if resolved is not None:
            return resolved
    return None


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-signature", _fix_signature)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("missing-reference", _resolve_private)
