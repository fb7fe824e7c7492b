"""Text read from a shared tracking store, made safe for where it goes next: an MLflow search
filter (a quote in a tag must not end the filter's string) and a terminal (escape sequences in a
run name must not reach another user's terminal). The report's markdown and CSV have their own
escaping (analysis/render.py)."""

from __future__ import annotations

from sweep.runtime.cli import printable  # noqa: F401  (store text's readers import it here too)


class Unquotable(ValueError):
    """A value holding both kinds of quote: no MLflow filter string can hold it."""


def equals(field: str, value) -> str:
    """The MLflow filter clause `field = <value>`, the value quoted so that no quote in it ends
    the string (MLflow's filter grammar has no escape inside quotes, but takes either kind)."""
    text = str(value)
    if "'" not in text:
        return f"{field} = '{text}'"
    if '"' not in text:
        return f'{field} = "{text}"'
    raise Unquotable(f"{printable(text)[:80]!r} holds both ' and \": it cannot be searched for")


def stored_list(value) -> list[str]:
    """A JSON list of strings as a run records one (a param such as lora.target_modules or a
    study's objectives); [] for anything else a store may hold instead."""
    import json

    try:
        items = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return []
    return [str(x) for x in items] if isinstance(items, list) and all(isinstance(x, str) for x in items) else []
