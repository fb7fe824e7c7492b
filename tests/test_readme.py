"""Every command in the README runs as written: each `python sweep.py` line composes and passes the
checks a job runs before any compute (every value of a grid, the Optuna search space parsed), each
`make` target exists and expands, and each other program takes the options the line gives it."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweep.pipeline.checks import validate
from sweep.study.search import parse_search_space
from tests import forked
from tests.conftest import ROOT, clean_env

README = ROOT / "README.md"


def commands() -> list[str]:
    """The README's shell commands: each line of its bash blocks, comments dropped, `a && b` split, a
    placeholder (`<run id>`) as one word."""
    blocks = re.findall(r"```bash\n(.*?)```", re.sub(r"<([^<>]+)>", lambda m: m[1].replace(" ", "_").upper(),
                                                        README.read_text()), re.S)
    lines = [re.split(r"\s{2,}#|^#", line)[0].strip() for block in blocks for line in block.splitlines()]
    return [part.strip() for line in lines if line for part in line.split("&&")]


def of(program: str) -> list[str]:
    return [c for c in commands() if c.startswith(program)]


def test_the_readme_has_the_two_setup_commands_and_every_kind_of_command_is_checked():
    assert {"make run", "make test"} <= set(commands())
    checked = (of("python sweep.py") + of("make ") + of("python -m ") + of("python reproduce.py")
               + of("python generate_instructions.py") + of("python settle.py") + of("source "))
    assert sorted(checked) == sorted(commands())


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("command", of("python sweep.py"))
def test_each_sweep_command_composes_and_passes_the_checks(command):
    words = [w for w in shlex.split(command)[2:] if w not in ("-m", "--cfg", "job")]
    parsed = OverridesParser.create().parse_overrides(words)
    fixed = [w for w, o in zip(words, parsed) if not o.is_sweep_override()]
    sweeps = [(w, o) for w, o in zip(words, parsed) if o.is_sweep_override()]
    cfg = composed(fixed)
    validate(cfg)
    if cfg.hydra.sweeper._target_.endswith("OptunaSweeper"):  # (the sweeper's grammar: an Optuna search space)
        space = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()] + [w for w, _ in sweeps]
        assert parse_search_space(space).distributions
        return
    for _, override in sweeps:  # a grid: every value of each swept key composes and passes
        for value in override.sweep_string_iterator():
            validate(composed([*fixed, f"{override.get_key_element()}={value}"]))


def test_each_make_target_exists_and_expands():
    for command in of("make "):
        p = subprocess.run(["make", "-n", *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, (command, p.stderr)


@pytest.mark.parametrize("command", of("python -m ") + of("python reproduce.py") + of("python generate_instructions.py")
                         + of("python settle.py"))
def test_each_other_program_takes_the_options_the_readme_gives_it(command):
    words = shlex.split(command)
    program = words[1:3] if words[1] == "-m" else words[1:2]
    options = [w.split("=")[0] for w in words[1 + len(program):] if w.startswith("--")]
    p = forked.run([*program, "--help"], ROOT, clean_env(), timeout=120)
    assert p.returncode == 0, (command, p.stderr[-2000:])
    assert all(re.search(re.escape(option) + r"(?![\w-])", p.stdout) for option in options), (command, p.stdout)
