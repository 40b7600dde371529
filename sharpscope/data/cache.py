"""Where sharpscope keeps generated data: ``$SHARPSCOPE_CACHE`` or ``~/.cache/sharpscope``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SHARPSCOPE_CACHE"


def cache_dir() -> Path:
    """The cache folder (not created here); read from the environment at every call."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sharpscope"
