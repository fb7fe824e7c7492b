"""Checks the command line's overrides against the config tree before Hydra composes it.

Hydra rejects an unknown key or group option with a multi-line message and no suggestion; users
sweeping overnight deserve one line that names the key and the closest real ones.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from sweep.config import PROJECT_ROOT, ConfigError, close_matches
from sweep.pipeline.checks import validate
from sweep.runtime.secrets import redact

CONF = PROJECT_ROOT / "conf"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))  # _x: shared parts


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
    path = CONF / group / f"{option}.yaml"
    is_global = "@package _global_" in path.read_text()  # experiment/ and hparams_search/ files
    node = OmegaConf.load(path)
    keys = set(_keys(node, "" if is_global else f"{group}."))
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and (CONF / group / f"{parent}.yaml").is_file():
            keys |= option_keys(group, parent)
    return keys


def check_overrides(args: list[str], defaults: DictConfig, entry: str = "sweep.py") -> None:
    """Raise ConfigError for an unknown group option or key among `args` (command-line overrides).

    `defaults` is the composed default config; keys that a group option adds are looked up in
    that option's YAML too (e.g. `model.from_config.hidden_size` with `model=tiny`).
    """
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a])
    except OverrideParseException as e:
        raise ConfigError(f"{e.override}: not an override Hydra can parse ({str(e).splitlines()[0]}); quote a value "
                          f"with special characters, e.g. key='a=b?c'") from None
    overrides = [o for o in parsed
                 if not o.is_hydra_override() and not o.is_add() and not o.is_force_add() and not o.is_delete()]
    chosen = {o.key_or_group: o for o in overrides if (CONF / o.key_or_group).is_dir()}
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
                          f"lists them (prefix a new key with + to add it)")


def composed_defaults(compose, config_name: str, overrides: list[str]) -> DictConfig:
    """The config with the command line's single group choices applied (an experiment may switch
    groups, e.g. experiment=instruction_data chooses data=self_instruct, whose keys then exist);
    the plain defaults when those choices do not compose (check_overrides names the bad one)."""
    choices = [a for a in overrides if "=" in a and not a.startswith(("+", "~"))
               and (CONF / a.split("=", 1)[0]).is_dir() and "," not in a.split("=", 1)[1]]
    try:
        return compose(config_name=config_name, overrides=choices)
    except Exception:  # noqa: BLE001  (an unknown option: reported by check_overrides with its fix)
        return compose(config_name=config_name)


def exit_on_bad_overrides(argv: list[str], config_name: str = "config", check=validate) -> None:
    """Check `python sweep.py ARGS` (or another entry point's `config_name`, whose values `check`
    validates) before Hydra starts; print one line and exit 2 on a bad one."""
    import sys

    from hydra import compose, initialize_config_dir

    if any(a.startswith(("--config", "-cp", "-cn", "-cd", "--info", "--help", "-h")) for a in argv):
        return  # another config tree, or Hydra's own help
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            check_overrides(overrides, composed_defaults(compose, config_name, overrides), Path(sys.argv[0]).name)
            if not any(a.startswith("-") for a in argv):  # one job, no Hydra flags: check its values before
                check(compose(config_name=config_name, overrides=overrides))  # Hydra makes its output folder
    except ConfigError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(2)
