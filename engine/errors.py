"""The user's mistakes: one exception family, caught the same way by every entry point.

A ``UserError`` is something the user can fix -- a config key, a manifest row,
a file, a folder -- and its message says what and how, in one line. Entry points
wrap their ``main`` in ``exit_on_user_error``: such an error prints that line
and exits with status 2, no traceback (``ENGINE_DEBUG=1`` prints the traceback
too). Anything else is a bug of ours and keeps its traceback (exit 1).

The family: ``ConfigError`` (here), ``ManifestError`` (engine/data/manifest.py),
``CacheError`` (engine/data/cache/format.py), ``BadImageError``
(engine/data/dali/bad_images.py), ``PretrainedWeightsError`` and
``TextEncoderUnavailable`` (engine/models/), ``RunFolderError`` and
``CheckpointError`` (engine/training/), ``NonFiniteLoss``
(engine/training/loop.py). Each keeps its older base class (ValueError,
RuntimeError, OSError) so code that caught those still does.
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable, TypeVar

DEBUG_ENV = "ENGINE_DEBUG"
EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A mistake in the user's config, data or files; the message names the key/file/row and the fix."""

    label = "error"  # what the one line starts with


class ConfigError(UserError, ValueError):
    """A configuration problem, always naming the key (and the file when there is one)."""

    label = "config error"


class RunFolderError(UserError, RuntimeError):
    """The run folder cannot be used as asked (a run is already there, nothing to resume, not writable)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read, trusted, written or does not fit this run's model."""


def user_error_line(e: UserError) -> str:
    """The one line printed for ``e``: ``<label>: <message>``, prefixed by the rank when there are several."""
    rank, world = os.environ.get("RANK"), int(os.environ.get("WORLD_SIZE", "1") or 1)
    where = f"[rank {rank}] " if rank is not None and world > 1 else ""
    return f"{where}{e.label}: {e}"


def _close_progress_bars() -> None:
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def exit_on_user_error(main: F) -> F:
    """Decorator for an entry point's ``main``: a UserError becomes its one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            _close_progress_bars()  # so the message starts a line of its own
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                traceback.print_exc()
            print(user_error_line(e), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
