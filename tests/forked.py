"""`python sweep.py ARGS` (or another script, or `python -m module ARGS`) for the tests, each in a
new process forked from a server that imported the libraries once (the standard library's
multiprocessing forkserver with its preload): the same command, entry point and exit status as a
new interpreter, without its ten seconds of imports (of a tiny job's twenty). The suite runs about
a hundred such commands. `SFT_TESTS_FORK=0` runs each in a new interpreter instead.

Each child takes the environment it is given, the working folder, sys.argv, and fresh stdout and
stderr files; it runs the script or module as `__main__` and ends as the interpreter would
(atexit handlers, then the exit status: SystemExit's code, 1 after an uncaught exception, which it
prints).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sweep.launcher import fork_server

ROOT = Path(__file__).resolve().parent.parent
# What a job imports, as the launcher's fork server preloads it (a module a job imports lazily, such as
# MLflow's SQL store, costs every forked command its import again), and what a sweep and a report add.
PRELOAD = [*fork_server.PRELOAD, "sweep.pipeline.overrides", "sweep.scoring.prefix_cache", "sweep.study.optuna_sweeper",
           "analysis.summary"]
FORK = os.environ.get("SFT_TESTS_FORK", "1") != "0"
# Commands that get an interpreter: joblib's loky workers hang when started from a forkserver's child;
# a sweep's extra workers (n_jobs) start as new interpreters, and a forked first worker, ten seconds
# ahead of them, would run every trial before they join (tests check that all workers take part).
SPAWNED = ("hydra/launcher=processes", "hydra.sweeper.n_jobs=")


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _run(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The child: `python ARGV` as the interpreter would run it (a script under cwd, or `-m` and a
    module: sys.path starts with the script's folder, or with cwd, as it would)."""
    import atexit
    import runpy
    import traceback

    from sweep.runtime import memory

    memory.freeze_long_lived()  # (the preloaded libraries: as a job does, so that collections skip them)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    module = argv[1] if argv[0] == "-m" else None
    script = str(Path(cwd) / argv[0])
    sys.argv = argv[1:] if module else list(argv)  # (runpy puts the module's file name first, as -m does)
    sys.path[0:0] = [cwd if module else str(Path(script).parent)]
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (as the interpreter does: the traceback, then status 1)
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`python ARGV` (ARGV[0]: a script under cwd, or `-m` and a module), output captured, as subprocess.run
    would."""
    command = [sys.executable, *argv]
    if not FORK or any(a.startswith(SPAWNED) for a in argv):
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    with tempfile.TemporaryDirectory(prefix="forked-") as tmp:
        out, err = f"{tmp}/stdout", f"{tmp}/stderr"
        child = _context().Process(target=_run, args=(list(argv), str(cwd), dict(env), out, err))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(command, child.exitcode, Path(out).read_text(errors="replace"),
                                           Path(err).read_text(errors="replace"))
