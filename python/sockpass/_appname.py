"""The application name a Python program gets when it gives none.

The broker's own default is the executable's name, which for every Python
program is the interpreter ("python3.11"), so SAMEAPP would join unrelated
programs. A Python program is named by what it runs instead:

- ``python -m pkg.mod``: the module, ``pkg.mod`` (``python -m pkg``, which
  runs ``pkg/__main__.py``: ``pkg``), from ``__main__.__spec__.name``;
- ``python path/to/server.py`` (or a script with a shebang): the script's
  file name without ``.py``, ``server``;
- no script (``python -c``, the REPL, an embedded interpreter): nothing, and
  the broker's default applies.

At most 255 bytes (the broker's limit), cut at a character boundary.
"""

from __future__ import annotations

import os
import sys

_MAX_APP = 255


_UNSET = object()
_cached: object = _UNSET


def default_app_name() -> str | None:
    """The name sent when ``app_name`` is None (computed once)."""
    global _cached
    if _cached is _UNSET:
        _cached = _compute()
    return _cached  # type: ignore[return-value]


def _compute() -> str | None:
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(name, str) and name:
        name = name.removesuffix(".__main__")
    else:
        argv0 = sys.argv[0] if sys.argv else ""
        if argv0 in ("", "-c", "-"):
            return None
        name = os.path.basename(argv0).removesuffix(".py")
    if not name:
        return None
    return name.encode()[:_MAX_APP].decode(errors="ignore")


def app_name_or_default(app_name: str | None) -> str | None:
    """``app_name`` as given, or the program's name when it is None."""
    return default_app_name() if app_name is None else app_name
