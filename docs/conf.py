"""Sphinx configuration for nslib's API reference (built by ``make docs``)."""

from __future__ import annotations

import importlib
from importlib.metadata import version as _dist_version
from typing import Any

project = "nslib"
author = "the nslib authors"
copyright = "the nslib authors"
release = _dist_version("nslib")  # the one version, from pyproject.toml via the install
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
html_theme = "furo"
html_title = f"nslib {release}"
exclude_patterns = ["_build"]

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

# Nitpicky mode (make docs passes -n) checks every cross-reference.  The build
# must work offline, so there is no intersphinx: names from the standard
# library and from the libraries nslib wraps cannot resolve and are ignored.
# So are private names (a leading underscore), type variables and the private
# type aliases that appear in signatures.  Every other reference must resolve.
_EXTERNAL = (
    "asyncio|builtins|collections|concurrent|contextlib|datetime|docker|enum|ipaddress|os"
    "|pathlib|pyroute2|socket|subprocess|threading|types|typing"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({_EXTERNAL})(\..+)?"),
    (r"py:.*", r"(.+\.)?_\w+(\..+)?"),  # private: nslib._syscalls, nslib.plugin._Tracker
    (r"py:.*", r"(typing\.)?~?[A-Z]|nslib\.\w+\.[A-Z]"),  # TypeVars and ParamSpecs
    (r"py:class", r"NsLike|Target"),  # private type aliases in signatures
]


def _public_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a name users import from the package to where it is documented.

    The package re-exports names from its modules (``nslib.NsHandle`` is
    ``nslib.handle.NsHandle``), and docstrings use that vocabulary:
    ``nslib.NsHandle``, or just ``NsHandle``, ``NetNamespace.parse``,
    ``entered``.  Anything that is not a re-export stays unresolved.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    if target.startswith("nslib."):
        target = target[len("nslib.") :]
    head, _, rest = target.partition(".")
    package = importlib.import_module("nslib")
    if head not in package.__all__:
        return None
    try:
        obj = getattr(package, head)  # a lazy name imports its module here
    except ImportError:
        return None  # autodoc has already reported the broken module
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str) or not home.startswith("nslib."):
        return None
    name = getattr(obj, "__qualname__", head) if not isinstance(obj, type(package)) else ""
    new = ".".join(part for part in (obj.__name__ if not name else home, name, rest) if part)
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node.get("refdoc"), app.builder, node.get("reftype"), new, node, contnode
    )


def setup(app: Any) -> None:
    """Register the alias resolver."""
    app.connect("missing-reference", _public_alias)
