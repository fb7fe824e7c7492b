"""Checks the command line's overrides against the config tree before Hydra composes it.

Hydra rejects an unknown key or group option with a multi-line message and no suggestion; users
sweeping overnight deserve one line that names the key and the closest real ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.config import CONF_DIR, ConfigError, close_matches, group_options
from sweep.pipeline.checks import validate
from sweep.runtime.cli import refuse
from sweep.runtime.retry import first_line
from sweep.tracking.checks import probe_server

ADDABLE = ("tracking.tags.",)  # keys a user may add with +: the run's own tags
FLAGS_WITH_VALUES = ("--cfg", "-c", "--package", "-p", "--experimental-rerun")  # Hydra's: `--cfg job`


def _keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a config (interpolations are not resolved: only names matter here)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    out = []
    for k, v in node.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _keys(v, f"{prefix}{k}.")
    return out


def option_keys(group: str, option: str) -> set[str]:
    """The dotted keys a group option sets, with those of the options of the same group it builds
    on (its defaults list, e.g. data/self_instruct_generated.yaml on data/self_instruct.yaml)."""
    path = CONF_DIR / group / f"{option}.yaml"
    is_global = "@package _global_" in path.read_text()  # experiment/ and hparams_search/ files
    node = OmegaConf.load(path)
    keys = set(_keys(node, "" if is_global else f"{group}."))
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and (CONF_DIR / group / f"{parent}.yaml").is_file():
            keys |= option_keys(group, parent)
    return keys


def check_overrides(args: list[str], defaults: DictConfig, entry: str = "sweep.py") -> None:
    """Raise ConfigError for an unknown group option or key among `args` (command-line overrides).

    `defaults` is the composed default config; keys that a group option adds are looked up in
    that option's YAML too (e.g. `model.from_config.hidden_size` with `model=tiny`).
    """
    for a in args:
        if "=" not in a and not a.startswith("~"):
            raise ConfigError(f"{a}: an override needs a value ({a}=<value>); `python {entry} --cfg job` shows "
                              "the keys and their values")
    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
    except OverrideParseException as e:
        raise ConfigError(f"{e.override}: not an override Hydra can parse ({first_line(e)}); quote a value "
                          f"with special characters, e.g. key='a=b?c'") from None
    for o in parsed:
        if o.is_delete():
            raise ConfigError(f"{o.input_line}: deleting a key leaves the job without it; set a value instead "
                              f"({o.key_or_group}=...)")
        if (o.is_add() or o.is_force_add()) and not (CONF_DIR / o.key_or_group).is_dir() \
                and not o.key_or_group.startswith(ADDABLE):
            raise ConfigError(f"{o.input_line}: nothing reads a new key {o.key_or_group}; set an existing key "
                              f"(`python {entry} --cfg job` lists them), or add tags as +tracking.tags.<name>=...")
    overrides = [o for o in parsed if not o.is_hydra_override() and not o.is_add() and not o.is_force_add()]
    chosen = {o.key_or_group: o for o in overrides if (CONF_DIR / o.key_or_group).is_dir()}
    for group, o in chosen.items():
        for option in o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]:
            if str(option) not in group_options(group) and group != "hydra":
                raise ConfigError(f"{group}={option}: no such option in conf/{group}/; choose one of "
                                  f"{', '.join(group_options(group))}{close_matches(option, group_options(group))}")
    known = set(_keys(defaults))
    for group, o in chosen.items():  # keys of the selected options exist too
        for option in o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]:
            known |= option_keys(group, str(option))
    for o in overrides:
        key = o.key_or_group
        if key in chosen or key in known:
            continue
        raise ConfigError(f"{key}: no such config key{close_matches(key, known)}; `python {entry} --cfg job` "
                          f"lists them")


def check_hydra_overrides(args: list[str], composed) -> None:
    """Hydra's own keys (`hydra.*`) and groups (`hydra/launcher=...`) among `args`: an unknown key
    named with the closest ones, a bad value or option in one line (Hydra's own message, first line).
    `composed`: `Composer.composed`."""
    hydra_args = [a for a in args if a.startswith(("hydra.", "hydra/"))]
    if not hydra_args:
        return
    groups = single_group_choices(args, hydra=True)
    try:
        cfg = composed(groups, hydra=True)
    except Exception as e:  # noqa: BLE001  (an unknown hydra/<group> option)
        bad = next((a for a in groups if a.startswith("hydra/")), groups[0] if groups else "")
        raise ConfigError(f"{bad}: {first_line(e.__cause__ or e)}") from None
    known = {f"hydra.{k}" for k in _keys(cfg.hydra)}
    for a in hydra_args:
        key = a.split("=", 1)[0]
        if key.startswith("hydra.") and key not in known and not key.startswith(("hydra.sweeper.params.",
                                                                                  "hydra.job.env_set.")):
            raise ConfigError(f"{key}: no such Hydra key{close_matches(key, known)}; `python sweep.py --cfg hydra` "
                              "lists them")
    values = [a for a in hydra_args if a not in groups]
    try:  # all at once; one at a time only to name the one Hydra's schema refuses
        cfg = composed([*groups, *values], hydra=True)
    except Exception as together:  # noqa: BLE001
        for a in values:
            try:
                composed([*groups, a], hydra=True)
            except Exception as e:  # noqa: BLE001  (a value Hydra's schema refuses)
                raise ConfigError(f"{a}: {first_line(e.__cause__ or e)}") from None
        raise ConfigError(f"{' '.join(values)}: {first_line(together.__cause__ or together)}") from None
    fork = [a for a in values if a.startswith("hydra.launcher.fork=")]
    if fork and not isinstance(OmegaConf.select(cfg, "hydra.launcher.fork", default=None), bool):
        raise ConfigError(f"{fork[-1]} is invalid: must be true or false")


def single_group_choices(args: list[str], hydra: bool = False) -> list[str]:
    """The command line's single choices of a config group (`model=tiny`; `hydra/launcher=basic`
    too when `hydra`); a swept group (`method=lora,full`) is not one."""
    return [a for a in args if (hydra and a.startswith("hydra/"))
            or ("=" in a and not a.startswith(("+", "~")) and (CONF_DIR / a.split("=", 1)[0]).is_dir()
                and "," not in a.split("=", 1)[1])]


class Composer:
    """Hydra's compose, once per list of overrides: the checks compose the same choices several
    times (the defaults, Hydra's keys, the job; a third of a second each on 2 cores). Composed
    with the Hydra node, which a caller without `hydra` gets removed, as Hydra's compose does."""

    def __init__(self, compose, config_name: str):
        self._compose, self._config_name, self._done = compose, config_name, {}

    def composed(self, overrides: list[str], hydra: bool = False) -> DictConfig:
        key = tuple(overrides)
        if key not in self._done:
            self._done[key] = self._compose(config_name=self._config_name, overrides=list(key),
                                            return_hydra_config=True)
        cfg = copy.deepcopy(self._done[key])  # (a caller may change its copy)
        if not hydra:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg


def composed_defaults(composed, overrides: list[str]) -> DictConfig:
    """The config with the command line's single group choices applied (an experiment may switch
    groups, e.g. experiment=instruction_data chooses data=self_instruct, whose keys then exist);
    the plain defaults when those choices do not compose (check_overrides names the bad one).
    `composed`: `Composer.composed`."""
    try:
        return composed(single_group_choices(overrides))
    except Exception:  # noqa: BLE001  (an unknown option: reported by check_overrides with its fix)
        return composed([])


def swept_jobs(overrides: list[str]) -> list[list[str]]:
    """Overrides for jobs that between them take every value of every swept key (a grid's lists,
    `choice`, `range`; an `interval`'s two ends), each other swept key at its first value: a
    bad value fails one of them, at a cost that grows with the values, not with their product."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override() and not o.is_hydra_override()]
    values: dict[str, list[str]] = {}
    for o in parsed:
        if not o.is_sweep_override() or o.is_hydra_override():
            continue
        key = o.get_key_element()
        if o.is_interval_sweep():
            value = o.value()
            if value.start > value.end:
                raise ConfigError(f"{o.input_line}: interval(low, high) needs low <= high")
            ends = [value.start, value.end]
            values[key] = [str(int(v)) if "int" in value.tags else repr(float(v)) for v in ends]
        else:
            values[key] = list(o.sweep_string_iterator())
            if not values[key]:
                raise ConfigError(f"{o.input_line}: sweeps no value")
    first = {k: v[0] for k, v in values.items()}
    jobs = [[*plain, *(f"{k}={v}" for k, v in first.items())]]
    for key, options in values.items():
        jobs += [[*plain, *(f"{k}={value if k == key else v}" for k, v in first.items())] for value in options[1:]]
    return jobs


def exit_on_bad_overrides(argv: list[str], config_name: str = "config", check=validate) -> None:
    """Check `python sweep.py ARGS` (or another entry point's `config_name`, whose values `check`
    validates) before Hydra starts; print one line and exit 2 on a bad one."""
    import sys

    from hydra import compose, initialize_config_dir

    if any(a.startswith(("--config", "-cp", "-cn", "-cd", "--info", "--help", "-h")) for a in argv):
        return  # another config tree, or Hydra's own help
    overrides = [a for i, a in enumerate(argv)
                 if not a.startswith("-") and (i == 0 or argv[i - 1] not in FLAGS_WITH_VALUES)]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = Composer(compose, config_name).composed
            check_overrides(overrides, composed_defaults(composed, overrides), Path(sys.argv[0]).name)
            check_hydra_overrides(overrides, composed)
            if not any(a.startswith("-") for a in argv):  # one job, no Hydra flags: check its values before
                cfg = composed(overrides)  # Hydra makes its output folder
                check(cfg)
                probe_server(str(OmegaConf.select(cfg, "tracking.uri", default="")))
            elif any(a in ("-m", "--multirun") for a in argv) and len(argv) == len(overrides) + 1:
                jobs = swept_jobs(overrides)
                for job in jobs:  # a sweep: every value of every swept key, before a store or study
                    check(composed(job))
                cfg = composed(jobs[0])
                probe_server(str(OmegaConf.select(cfg, "tracking.uri", default="")))
    except ConfigError as e:
        sys.exit(refuse(e))
