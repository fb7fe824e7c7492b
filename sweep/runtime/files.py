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
