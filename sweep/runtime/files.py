"""Files by content: their sha256, which cache keys and the checks of reused artifacts compare."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_digest(module: str) -> str:
    """sha256 of a module's source, found by its dotted name as an import finds it (a cache key
    holds the code that computed a result; a moved file is found where it now lives)."""
    return sha256(Path(importlib.util.find_spec(module).origin))


def check_writable(key: str, location) -> None:
    """ConfigError unless a folder can be made at `location` (a local path, or a file:// URI): its
    nearest existing parent must take a new folder (tried with a temporary one, removed at once:
    `os.access` says yes to root on /proc, where nothing can be made). Other URI schemes are the
    store's to check."""
    import os
    import tempfile

    from sweep.config import ConfigError

    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return
    path = Path(text.removeprefix("file://")).expanduser()
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise ConfigError(f"{key}={text!r} is invalid: {parent} is not a folder; give a folder this user can write")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sft-sweep-check-", dir=parent))
    except OSError as e:
        raise ConfigError(f"{key}={text!r} is invalid: nothing can be written in {parent} ({e.strerror}); give a "
                          "folder this user can write") from None
