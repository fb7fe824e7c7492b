"""The output folder a generation run resumes from: its tasks and round records, appended and
fsynced round by round (a round's record is its commit point), and the settings it must keep."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.config import ConfigError
from sweep.data.examples import GENERATED_FIELDS as FIELDS
from sweep.data.examples import (
    TASKS_FILE,
    json_lines,
)
from sweep.self_instruct.rounds import Round

log = logging.getLogger(__name__)
ROUNDS_FILE, SETTINGS_FILE, RUN_FILE = "rounds.jsonl", "settings.json", "run.json"


RESUMABLE = ("rounds",)  # settings that may change between a killed run and its continuation


# ---------------------------------------------------------------- the folder a run resumes from
def settings_of(model: DictConfig, generation: DictConfig, seed: int) -> dict:
    """What makes two runs the same generation (the model, the seed, the loop's settings)."""
    g = OmegaConf.to_container(generation, resolve=True)
    return {"model": model.name, "name_or_path": model.name_or_path, "seed": seed,
            **{k: v for k, v in g.items() if k not in ("output_dir", *RESUMABLE)}}


@dataclass
class State:
    folder: Path
    tasks: list[dict]
    rounds: list[dict]
    run_id: str | None

    @classmethod
    def open(cls, folder: Path, settings: dict) -> State:
        """The folder's whole rounds (a round cut short by a kill is dropped), or a new one."""
        check_folder(folder, settings)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SETTINGS_FILE).is_file():
            write_synced(folder / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        rounds = read_rows(folder / ROUNDS_FILE, ["round"])
        done = len(rounds)
        tasks = read_rows(folder / TASKS_FILE, [*FIELDS, "round"])
        whole = [t for t in tasks if t["round"] <= done]
        if len(whole) < len(tasks):
            log.info("dropping %d task(s) of round %d, cut short by a kill", len(tasks) - len(whole), done + 1)
        for name, rows in ((TASKS_FILE, whole), (ROUNDS_FILE, rounds)):  # without what a kill cut short
            text = "".join(json.dumps(row) + "\n" for row in rows)
            if (folder / name).is_file() and (folder / name).read_text(encoding="utf-8") != text:
                write_synced(folder / name, text)
        run_file = folder / RUN_FILE
        run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        return cls(folder, whole, rounds, run_id)

    def add(self, r: Round) -> dict:
        """Append a round: its tasks, then its record (the commit point), each fsynced."""
        append_synced(self.folder / TASKS_FILE, "".join(json.dumps(t) + "\n" for t in r.tasks))
        self.tasks += r.tasks
        record = r.record(pool_size=len(self.tasks))
        append_synced(self.folder / ROUNDS_FILE, json.dumps(record) + "\n")
        self.rounds.append(record)
        return record

    def remember_run(self, run_id: str) -> None:
        self.run_id = run_id
        write_synced(self.folder / RUN_FILE, json.dumps({"run_id": run_id}) + "\n")


def check_folder(folder: Path, settings: dict) -> None:
    """A folder may be continued only by the generation that wrote it."""
    settings_file = folder / SETTINGS_FILE
    if not settings_file.is_file():
        return
    stored = json.loads(settings_file.read_text())
    changed = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
    if changed:
        raise ConfigError(f"generation.output_dir={folder} holds a generation with other settings "
                          f"({', '.join(changed)}); choose another generation.output_dir or delete it")


def read_rows(path: Path, fields: list[str], fix: str | None = None) -> list[dict]:
    """The JSON objects of a JSONL file, each with `fields`; a last line cut short by a kill is
    dropped. `fix`: what the one-line error tells the user to do (default: start the folder again)."""
    if not path.is_file():
        return []
    fix = fix or f"delete generation.output_dir={path.parent} to start again"
    rows = []
    for n, row in json_lines(path, fix, whole_lines_only=True):
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise ConfigError(f"{path}:{n}: missing field {missing[0]!r}; {fix}")
        rows.append(row)
    return rows


def append_synced(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_synced(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_seed_tasks(path: str | Path, in_context: int) -> list[dict]:
    tasks = read_rows(Path(path), [*FIELDS, "is_classification"], fix="fix generation.seed_file")
    if len(tasks) < in_context:
        raise ConfigError(f"generation.seed_file={path}: {len(tasks)} tasks, fewer than generation.in_context="
                          f"{in_context}; give more seed tasks or lower generation.in_context")
    return tasks
