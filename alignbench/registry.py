"""The one registry of methods and tasks.

Methods and tasks register themselves with ``@register_method("name")`` / ``@register_task("name")``.
They are discovered, without editing any other file, from:

1. every module in the ``methods/`` and ``tasks/`` plugin folders;
2. the Python entry-point groups ``alignbench.methods`` and ``alignbench.tasks`` (third-party packages:
   an entry point names a module, importing it registers its classes);
3. extra plugin files or folders named in ``$ALIGNBENCH_PLUGINS`` (``os.pathsep``-separated) or
   passed to :func:`load_plugins` (the CLI's ``--plugins``).

Lookups of unknown names raise a one-line error with a did-you-mean.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, TypeVar

from .errors import AlignbenchError

T = TypeVar("T", bound=type)

_METHODS: dict[str, type] = {}
_TASKS: dict[str, type] = {}
_discovered = False
_loaded_paths: set[str] = set()


def _source(cls: type) -> str:
    """Where a class was defined: its module's file (resolved), else its module name."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else cls.__module__


def _register(table: dict[str, type], kind: str, name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        existing = table.get(name)
        # the same class from the same file again (a module imported twice, a reload) replaces itself;
        # anything else under a taken name is refused, naming both sources
        if existing is not None and (existing.__qualname__ != cls.__qualname__ or _source(existing) != _source(cls)):
            raise AlignbenchError(f"{kind} '{name}' is registered twice: {existing.__qualname__} in {_source(existing)} "
                                  f"and {cls.__qualname__} in {_source(cls)}")
        cls.name = name
        table[name] = cls
        return cls

    return deco


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`~alignbench.api.Method` subclass under ``name``."""
    return _register(_METHODS, "method", name)


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`~alignbench.api.Task` subclass under ``name``."""
    return _register(_TASKS, "task", name)


def _import_package_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _load_file(path: Path) -> None:
    key = str(path.resolve())
    if key in _loaded_paths:
        return
    mod_name = f"alignbench_plugin_{path.stem}_{abs(hash(key)) % 10**8}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise AlignbenchError(f"plugins: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except AlignbenchError:
        sys.modules.pop(mod_name, None)
        raise
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        raise AlignbenchError(f"plugins: {path}:{e.lineno}: syntax error ({e.msg})") from None
    except Exception as e:  # noqa: BLE001 - a failing import is the user's file: name it and its line
        sys.modules.pop(mod_name, None)
        import traceback

        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        line = f":{frames[-1].lineno}" if frames else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AlignbenchError(f"plugins: {path}{line}: {type(e).__name__}: {first}"[:300]) from None
    _loaded_paths.add(key)


def load_plugins(paths: list[str | Path] | None = None) -> None:
    """Import plugin files (``x.py``) or every ``*.py`` in plugin folders."""
    for p in paths or []:
        path = Path(p)
        if path.is_dir():
            for f in sorted(path.glob("*.py")):
                if not f.name.startswith("_"):
                    _load_file(f)
        elif path.is_file() and path.suffix == ".py":
            _load_file(path)
        else:
            raise AlignbenchError(f"plugins: {path} is neither a .py file nor a folder")


def discover() -> None:
    """Import built-in plugin folders, entry points and $ALIGNBENCH_PLUGINS (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in ("alignbench.methods", "alignbench.tasks"):
        _import_package_modules(package)
    for group in ("alignbench.methods", "alignbench.tasks"):
        for ep in entry_points(group=group):
            ep.load()
    env = os.environ.get("ALIGNBENCH_PLUGINS")
    if env:
        load_plugins([p for p in env.split(os.pathsep) if p])


def _lookup(table: dict[str, type], kind: str, name: str) -> type:
    discover()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known {kind}s: {', '.join(sorted(table))}"
    raise AlignbenchError(f"{kind}: unknown {kind} '{name}'{hint}")


def get_method(name: str) -> type:
    return _lookup(_METHODS, "method", name)


def get_task(name: str) -> type:
    return _lookup(_TASKS, "task", name)


def methods() -> dict[str, type]:
    discover()
    return dict(sorted(_METHODS.items()))


def tasks() -> dict[str, type]:
    discover()
    return dict(sorted(_TASKS.items()))
