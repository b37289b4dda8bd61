"""Sphinx configuration for nslib's API reference (built by ``make docs``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
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
# So are private names (a leading underscore), type variables and the type
# aliases that appear in signatures.  Every other reference must resolve.
_EXTERNAL = (
    "abc|asyncio|builtins|collections|concurrent|contextlib|datetime|docker|enum|ipaddress|json|os"
    "|pathlib|pyroute2|re|socket|subprocess|threading|types|typing"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({_EXTERNAL})(\..+)?"),
    (r"py:.*", r"(.+\.)?_\w+(\..+)?"),  # private: nslib._syscalls, nslib.plugin._Tracker
    (r"py:.*", r"(typing\.)?~?[A-Z](\.args|\.kwargs)?|nslib\.\w+\.[A-Z]"),  # TypeVars, ParamSpecs
    # The tracker protocol as signatures name it; the docstrings say in
    # words what it must offer.
    (r"py:class", r"Tracker"),
    (r"py:class", r"nl\..+"),  # the configurator's short name for nslib.netlink
]


def _type_aliases() -> list[tuple[str, str]]:
    """``("py:class", name)`` for every module-level type alias in nslib.

    Signatures show an alias by its name (``NsLike``, ``KindArg``); an alias
    is not a documented object, and the docstring says in words what it
    accepts, so these names are not nitpicked.
    """
    import nslib

    found = set()
    for info in pkgutil.walk_packages(nslib.__path__, "nslib."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, types.UnionType | typing._GenericAlias):
                found.add(name)
    return [("py:class", name) for name in sorted(found)]


nitpick_ignore = _type_aliases()


def _import(dotted: str) -> object:
    """The object a dotted ``nslib...`` name denotes, or ``None``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _same(a: object, b: object) -> bool:
    """Whether two lookups give the same object (a classmethod is bound anew each time)."""
    return a is not None and getattr(a, "__func__", a) is getattr(b, "__func__", b)


def _documented_as(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a reference to where the object it names is documented.

    Each page documents a public module, and a package documents what it
    re-exports (``nslib.netlink.Session`` is defined in
    ``nslib.netlink.session``).  Signatures name the defining module, and
    docstrings use what users import: ``nslib.NsHandle``, or just
    ``NsHandle``, ``NetNamespace.parse``, ``Result``.  A reference resolves
    to the documented name of the same object, or else to the one documented
    name that ends with it; anything else stays unresolved (and fails the
    nitpicky build).
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    domain = env.get_domain("py")
    names = sorted(domain.objects)
    obj = _import(target) if target.startswith("nslib.") else None
    if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
        tail = "." + target.rpartition(".")[2]
        found = [n for n in names if n.endswith(tail) and _same(_import(n), obj)]
    else:
        key = "." + target.removeprefix("nslib.")
        found = [n for n in names if n.endswith(key)]
        objs = [_import(n) for n in found]
        if any(not _same(o, objs[0]) for o in objs[1:]):
            return None  # two different things: ambiguous
    if not found:
        return None
    context = node.get("py:module")
    local = _import(f"{context}.{target}") if context else None
    if local is not None and not _same(local, _import(found[0])):
        return None  # the name means something else where it is used (an alias, say)
    return domain.resolve_xref(
        env, node.get("refdoc"), app.builder, node.get("reftype"), found[0], node, contnode
    )


def setup(app: Any) -> None:
    """Register the resolver of re-exported names."""
    app.connect("missing-reference", _documented_as)
