"""The package map holds: sweep/'s sub-packages import only their own layer or those below it,
nothing imports the recipes in sweep/pipeline/ from below, sweep/ never imports analysis/, and
no module imports itself through others (function-level imports count: they are circles too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top (docs/architecture.md): a module may import its own layer and the ones before it.
LAYERS = ["config", "vocabulary", "runtime", "tracking", "data", "training", "scoring", "stages", "self_instruct", "launcher", "study", "pipeline", "ops"]


def modules() -> dict[str, Path]:
    found = {}
    for package in ("sweep", "analysis", "labs"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in it (`from a.b import c` is a.b.c when c is
    a module, else a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            out |= subs or ({node.module} & known.keys())
            if subs and len(subs) < len(node.names) and node.module in known:
                out.add(node.module)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "sweep" and len(parts) > 1 else None


def test_sweep_imports_only_its_own_layer_or_below_and_never_analysis():
    wrong = []
    for src, targets in graph().items():
        for dst in targets:
            if src.startswith("sweep") and dst.startswith("analysis"):
                wrong.append(f"{src} -> {dst}")
            elif layer(src) is not None and layer(dst) is not None and layer(dst) > layer(src):
                wrong.append(f"{src} -> {dst} (upward: {LAYERS[layer(src)]} < {LAYERS[layer(dst)]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_sweep_module_sits_in_a_layer():
    assert {m for m in modules() if m.startswith("sweep.") and layer(m) is None} == set()
    assert {m.split(".")[1] for m in modules() if m.startswith("sweep.")} == set(LAYERS)


def test_no_import_circles():
    g, cycles, state = graph(), [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def config_groups() -> set[str]:
    """The top-level keys of the composed config (model, method, lora, eval, tracking, seed, ...)."""
    from tests.conftest import compose

    return set(compose())


LIBRARY = [layer for layer in LAYERS if layer not in ("study", "pipeline", "ops")]  # below the recipes


def whole_config_parameters(path: Path, groups: set[str]) -> list[str]:
    """Functions of `path` that take the whole config: a parameter named `cfg`, or a DictConfig
    parameter read through two or more top-level groups (`x.eval...` and `x.method...`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        configs = {a.arg for a in args if a.arg == "cfg" or (a.annotation is not None and "DictConfig" in ast.unparse(
            a.annotation))}
        read = {name: set() for name in configs}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in read:
                read[sub.value.id].add(sub.attr)
        found += [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno} {node.name}({name})" for name, attrs in read.items()
                  if name == "cfg" or len(attrs & groups) >= 2]
    return found


def test_library_functions_take_a_sub_config_never_the_whole_one():
    groups = config_groups()
    assert {"model", "method", "eval", "tracking"} <= groups  # (what the check below reads through)
    wide = [hit for package in LIBRARY for path in sorted((ROOT / "sweep" / package).rglob("*.py"))
            for hit in whole_config_parameters(path, groups)]
    if (ROOT / "sweep" / "config.py").is_file():
        wide += whole_config_parameters(ROOT / "sweep" / "config.py", groups)
    assert not wide, "\n".join(wide)


def test_the_check_finds_a_function_that_reads_two_groups(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def key(settings: DictConfig):\n    return settings.eval.limit, settings.method.name\n\n"
                      "def fine(e: DictConfig):\n    return e.limit\n")
    assert [h.split(" ")[1] for h in whole_config_parameters(module, config_groups())] == ["key(settings)"]


def test_no_module_is_over_400_lines():
    files = {**modules(), **{f"bench/{p.name}": p for p in (ROOT / "bench").glob("*.py")},
             **{f"scripts/{p.name}": p for p in (ROOT / "scripts").glob("*.py")}}
    long = {m: n for m, p in files.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def public_names(package: str) -> dict[str, list[str]]:
    """{name: the modules of `package` that define a top-level public class or function so named}."""
    found: dict[str, list[str]] = {}
    for module, path in modules().items():
        if module.split(".")[0] == package:
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                    found.setdefault(node.name, []).append(module)
    return found


def test_no_public_name_means_two_things_in_sweep():
    """A reader who meets `Search` or `first_line` knows which one it is (`main`: each entry point's)."""
    twice = {name: where for name, where in public_names("sweep").items() if len(where) > 1 and name != "main"}
    assert not twice, twice


def store_names() -> set[str]:
    """The tag and trial-attribute names of the vocabulary (sweep/vocabulary.py)."""
    from sweep import vocabulary

    return {v for k, v in vars(vocabulary).items() if k.isupper() and isinstance(v, str) and "." not in v[-5:]}


def literal_store_names(path: Path, names: set[str]) -> list[str]:
    """Where `path` writes a tag or trial-attribute name as a literal: `"tags.<name>"` (a search_runs
    column or a filter), `tags["<name>"]`, `tags.get("<name>")`, `"<name>" in tags`,
    `set_tag(run, "<name>", ...)`, `tags={"<name>": ...}`, a dict assigned to (or merged into) a name
    holding "tags" or handed to set_tags/start_tags/create_run/start_run, a dotted name as any dict's
    key, `user_attrs[...]`/`.get(...)`/`in` and `set_user_attr("<name>", ...)`."""
    def text(node) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    def owner(node) -> str:
        return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""

    def keys(tree) -> list:
        return [k for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys if k is not None]

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        hits = []  # constant nodes
        if text(node) is not None and text(node).startswith("tags."):
            found += [(node.lineno, text(node)[5:].strip("`").split(" ")[0])]
        elif isinstance(node, ast.Subscript) and ("tags" in owner(node.value) or "attrs" in owner(node.value)):
            hits.append(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f, args = node.func, node.args
            if f.attr in ("get", "pop") and ("tags" in owner(f.value) or "attrs" in owner(f.value)) and args:
                hits.append(args[0])
            elif f.attr in ("set_tag", "delete_tag") and len(args) >= 2:
                hits.append(args[1])
            elif f.attr in ("set_tag", "set_user_attr", "set_system_attr") and args:
                hits.append(args[0])
        if isinstance(node, ast.Call) and owner(node.func) in ("set_tags", "start_tags", "create_run", "start_run"):
            hits += [k for a in node.args for k in keys(a)]
        elif isinstance(node, ast.keyword) and node.arg in ("tags", "user_attrs"):
            hits += keys(node.value)
        elif isinstance(node, (ast.Assign, ast.AugAssign)) and any(
                "tags" in owner(t) for t in getattr(node, "targets", [getattr(node, "target", None)])):
            hits += keys(node.value)
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)) and (
                "tags" in owner(node.comparators[0]) or "attrs" in owner(node.comparators[0])):
            hits.append(node.left)
        elif isinstance(node, ast.Dict):  # (a dotted name is a tag whatever the dict: optuna.*, mlflow.*)
            hits += [k for k in node.keys if k is not None and "." in (text(k) or "")]
        found += [(h.lineno, text(h)) for h in hits if text(h) is not None]
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return sorted({f"{where}:{line}: {value!r}" for line, value in found if value in names})


def test_tag_and_trial_attribute_names_are_written_only_in_the_vocabulary():
    names = store_names()
    assert {"method", "optuna.trial_number", "retry_of", "mlflow.runName", "confirms"} <= names
    files = [p for m, p in modules().items() if m.split(".")[0] in ("sweep", "analysis") and m != "sweep.vocabulary"]
    files += [ROOT / f for f in ("sweep.py", "reproduce.py", "confirm.py", "generate_instructions.py")]
    literal = [hit for path in files for hit in literal_store_names(path, names)]
    assert not literal, "\n".join(literal)


def test_the_vocabulary_check_finds_a_literal_tag(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(run, client, df, trial, run_tags):\n"
                       "    client.set_tag(run, 'sweep_id', 'x')\n"
                       "    a, b = df['tags.method'], run.data.tags.get('optuna.trial_number')\n"
                       "    c = trial.user_attrs['retry_of']\n"
                       "    d = 'retry_of' in trial.user_attrs\n"
                       "    run_tags |= {'seed': '0'}\n"
                       "    return {'optuna.state': 'FAIL'}, a, b, c, d\n")
    assert [hit.split(": ")[1] for hit in literal_store_names(planted, store_names())] == [
        "'sweep_id'", "'method'", "'optuna.trial_number'", "'retry_of'", "'retry_of'", "'seed'", "'optuna.state'"]


def test_the_one_line_refusal_and_the_store_argument_are_written_once():
    """Every program refuses through runtime/cli.refuse and takes its store through add_tracking_uri
    (before: `--tracking-uri` six times, `print("error: ...")` fourteen with four degrees of sanitising)."""
    files = [p for m, p in modules().items() if m.split(".")[0] in ("sweep", "analysis") and m != "sweep.runtime.cli"]
    files += [ROOT / f for f in ("sweep.py", "reproduce.py", "confirm.py", "generate_instructions.py")]
    written = [f"{p.relative_to(ROOT)}: {what}" for p in files for what in ('"error: ', "f\"error: ", '"--tracking-uri"')
               if what in p.read_text()]
    assert not written, written


def test_the_recipe_derives_its_plan_once():
    """pipeline/plan.py derives what the config decides (stage, method, prompting, pool, baseline
    settings, run name) once; the job, its build and its scoring read the plan's fields, so no step
    can look a stage or a prompting up again and see another answer."""
    derived = ("STAGES[", "METHODS[", "Prompting.from_config(", "run_name(", "LineageScope(", "Settings(")
    again = [f"{path.name}:{n}: {line.strip()}" for path in (ROOT / "sweep" / "pipeline").glob("*.py")
             if path.name not in ("plan.py", "naming.py", "checks.py")
             for n, line in enumerate(path.read_text().splitlines(), 1) if any(d in line for d in derived)]
    assert not again, "\n".join(again)
