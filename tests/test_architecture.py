"""The package map holds: sweep/'s sub-packages import only their own layer or those below it,
nothing imports the recipes in sweep/pipeline/ from below, sweep/ never imports analysis/, and
no module imports itself through others (function-level imports count: they are circles too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top (docs/architecture.md): a module may import its own layer and the ones before it.
LAYERS = ["config", "runtime", "tracking", "data", "training", "scoring", "rlhf", "self_instruct", "study", "pipeline"]


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
