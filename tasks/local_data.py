"""Loads the project's JSONL files for lm-eval tasks (``custom_dataset: !function local_data.load_splits``).

Why not lm-eval's ``dataset_path: json``: relative ``data_files`` would resolve against the current
directory, and a malformed line would surface as a pyarrow error. Here paths resolve against
``data_dir`` (passed by the harness as task metadata; default: the project's ``data/`` folder), and
every line is checked for the fields the task needs, so a bad file fails with ``file:line``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class DataFileError(ValueError):
    """A data file is missing, empty or malformed; the message names the file (and line)."""


def resolve(path: str | Path, data_dir: str | Path | None = None) -> Path:
    path = Path(path)
    return path if path.is_absolute() else Path(data_dir or DEFAULT_DATA_DIR) / path


def read_jsonl(path: Path, required_fields: list[str] = (), text_fields: list[str] = (),
               label_values: dict | None = None) -> list[dict]:
    """Read one JSON object per line; fail with ``file:line`` on the first bad one: not JSON, not an
    object, a required field missing, a text field that is not a string, a label outside the task's
    (``label_values``: {field: allowed values}); a file that is not UTF-8 text fails as a whole."""
    if not path.is_file():
        raise DataFileError(
            f"data file not found: {path} (check the task's dataset_kwargs.data_files "
            f"or the harness' paths.data, now {path.parent.parent})"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not UTF-8 text (a binary file, or another encoding such as UTF-16); "
                            "save it as UTF-8 JSON lines") from None
    if "\0" in text:
        raise DataFileError(f"{path}: holds NUL bytes (a binary file?); give UTF-8 JSON lines")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required_fields if k not in row]
        if missing:
            raise DataFileError(f"{path}:{lineno}: missing field {', '.join(map(repr, missing))}")
        for k in text_fields:
            if not isinstance(row.get(k), str):
                raise DataFileError(f"{path}:{lineno}: field {k!r} must be text, got {type(row.get(k)).__name__}")
        for k, allowed in (label_values or {}).items():
            if row.get(k) not in allowed or isinstance(row.get(k), bool):
                raise DataFileError(f"{path}:{lineno}: {k} {json.dumps(row.get(k))[:40]} is not one of the task's "
                                    f"labels ({', '.join(map(str, allowed))})")
        rows.append(row)
    if not rows:
        raise DataFileError(f"{path}: the file holds no examples")
    return rows


class RowsDataset(datasets.Dataset):
    """A ``datasets.Dataset`` whose iteration converts the table to rows at once. Why: lm-eval builds
    a task's few-shot sampler with ``list(task.fewshot_docs())``, and ``Dataset.__iter__`` formats one
    row at a time: 4 s for SST-2's 66k training rows, at every task load of every job (and again for
    a k-shot pool), against 0.15 s for ``to_list()``. The rows are the same dicts, in the same order."""

    def __iter__(self):
        if self._indices is not None or self._format_type is not None:
            yield from super().__iter__()  # (a selection or a format: datasets' own iteration)
            return
        yield from self.to_list()


def load_splits(data_files: dict[str, str], data_dir: str | None = None,
                required_fields: list[str] = (), text_fields: list[str] = (),
                label_values: dict | None = None, **_metadata):
    """Return a ``datasets.DatasetDict`` with one split per entry of ``data_files``."""
    return datasets.DatasetDict({
        split: RowsDataset.from_list(read_jsonl(resolve(file, data_dir), list(required_fields), list(text_fields),
                                                dict(label_values or {})))
        for split, file in data_files.items()
    })
