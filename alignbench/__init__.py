"""alignbench: a comparative alignment benchmark suite.

The built-in plugins live in the repository's top-level ``methods/`` and ``tasks/`` folders and are
installed as ``alignbench.methods`` and ``alignbench.tasks`` (``pyproject.toml``: ``package-dir``). A source
checkout used without installing (``PYTHONPATH=.``) finds them the same way: the checkout's root is a
second search location of this package, used only for those two folders' names.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if all(_os.path.isfile(_os.path.join(_root, d, "__init__.py")) for d in ("methods", "tasks")):
    __path__.append(_root)  # noqa: F821 - a package's __path__; alignbench.methods -> <checkout>/methods
