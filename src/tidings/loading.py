"""Finding an application by name: ``module:attribute``, as uvicorn takes them.

``tidings serve myapp:rt`` and ``tidings asyncapi myapp:rt`` (and every worker
of ``--workers N``, which imports the module again in its own process) load the
:class:`~tidings.Tidings` object this way.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from tidings.application import Tidings
from tidings.errors import TidingsError


class AppNotFound(TidingsError):
    """The ``module:attribute`` does not name a Tidings application (one line says why)."""


def load_app(spec: str, app_dir: str | None = None) -> Tidings:
    """Import ``module`` (from ``app_dir`` first, default: the current directory) and
    return its ``attribute``, which must be a :class:`Tidings`."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppNotFound(f"{spec!r}: expected MODULE:ATTRIBUTE, e.g. myapp:rt")
    directory = str(Path(app_dir or ".").resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppNotFound(
                f"{spec!r}: no module {module_name!r} in {directory} (set --app-dir)"
            ) from None
        raise
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AppNotFound(f"{spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not isinstance(target, Tidings):
        kind = target.__name__ if isinstance(target, type) else type(target).__name__
        what = "the class" if isinstance(target, type) else "an object of type"
        raise AppNotFound(f"{spec!r} is {what} {kind}, not a Tidings application")
    return target
