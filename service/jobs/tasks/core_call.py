"""Call a core function by module and name with the keyword arguments it accepts.

The diff-report and recovery builders live in the core; a job passes its params through, plus
``progress``/``should_stop``/``device``/``out_dir`` when the function takes them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from medseglens_core.errors import MedSegLensError


class CoreFunctionMissing(MedSegLensError):
    """The core function a job kind needs is not in this build; upgrade the worker image."""


def resolve(module: str, names: tuple[str, ...]) -> Callable[..., Any]:
    """The first of ``names`` found in ``module``."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise CoreFunctionMissing(
            f"{module} cannot be imported ({exc}); install the full medseglens package."
        ) from exc
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    raise CoreFunctionMissing(
        f"{module} has none of {', '.join(names)}; this worker's core is too old for this job."
    )


def call_accepting(fn: Callable[..., Any], candidates: dict[str, Any]) -> Any:
    """``fn(**kw)`` with the subset of ``candidates`` it accepts (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        candidates = {k: v for k, v in candidates.items() if k in params}
    return fn(**candidates)
