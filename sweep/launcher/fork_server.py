"""A fork server for the fresh-process launcher: each job still starts in a process of its own,
from the same clean memory, and dies alone, but without paying the imports again.

A server process is started once per sweep. It imports the libraries a job needs (torch,
transformers, peft, lm-eval, MLflow, Optuna, TRL, the harness) and nothing else: it never builds
a model, opens a store or starts a thread. For each job the launcher sends it the job's payload;
it forks a child (copy-on-write: the imported modules are shared, not copied), which runs the job
exactly as a spawned process would (sweep/launcher/job_process.py) and exits. The server
reports the child's pid (so the launcher can pass a SIGTERM or Ctrl-C on to it) and then its exit
status (a SIGKILL from the out-of-memory killer is the job's failure, not the sweep's).

Why our own: multiprocessing's "forkserver" start method re-imports nothing, but runs a function
in a pool-like child and pickles its arguments and results through its own channel; Hydra's job
(payload, return file, exit status, signals passed on) is already shaped for a process of its own,
so the server only has to fork. The parts that make forking safe are kept explicit: the server is
single-threaded when it forks (checked), and CUDA is never initialised in it; if either does not
hold, or the platform cannot fork, the launcher spawns a new interpreter per job as before.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

# What every job imports (module names: the job's own code imports them), loaded once in the server
# and shared by every child. The lazily imported ones were found by listing what a forked job still
# imported: bitsandbytes alone (which peft loads to wrap any LoRA model, and which pulls in torch's
# inductor and networkx) cost each job 1.2 s.
PRELOAD = ("torch", "transformers", "peft", "datasets", "trl", "optuna", "scipy.stats", "git", "sacrebleu",
           "lm_eval", "lm_eval.models.huggingface", "lm_eval.evaluator", "lm_eval.tasks",
           "mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.tracing.processor.otel", "alembic",
           "bitsandbytes", "peft.tuners.lora.bnb", "peft.utils.transformers_weight_conversion",
           "transformers.models.llama.modeling_llama",  # (the default model's architecture)
           "sqlalchemy.dialects.sqlite", "alembic.command", "mlflow.store.tracking.sqlalchemy_workspace_store",
           "mlflow.tracing.export", "hydra._internal.core_plugins.basic_launcher",
           "hydra._internal.core_plugins.basic_sweeper",
           "sweep.pipeline.job", "sweep.launcher.job_process", "sweep.scoring.prefix_cache", "sweep.scoring.generation")
SPAWN = "spawn"  # the server's answer when it cannot fork safely: the launcher spawns the job instead


def can_fork() -> bool:
    return hasattr(os, "fork") and sys.platform.startswith("linux")


class ForkedJob:
    """A job's process as the launcher sees it (what runtime/processes.stop needs of a Popen)."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """The job's exit status (negative: the signal that killed it), as the server reports it."""
        if self.returncode is None:
            reply = self.server.receive(timeout)
            self.returncode = int(reply["code"])
        return self.returncode


def module_command(module: str) -> list[str]:
    """`python -P -m module`: a job's interpreter imports from the checkout (on PYTHONPATH) and the
    environment only. Without -P, `-m` puts the folder the sweep was started from first on sys.path,
    so a `torch/` folder or a planted `sacrebleu.py` there would be imported by every job."""
    return [sys.executable, "-P", "-m", module]


class ForkServer:
    """The launcher's end: starts the server, asks it for jobs, stops it."""

    def __init__(self, env: dict[str, str]) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        self.process = subprocess.Popen(
            [*module_command("sweep.launcher.fork_server"), str(commands_read), str(replies_write)],
            env=env, pass_fds=(commands_read, replies_write))
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self.served = 0  # jobs asked for

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, payload: Path, result: Path, env: dict[str, str]) -> ForkedJob | None:
        """The forked job running `payload` in environment `env` (the sweep's now: an Optuna sweeper
        sets its storage's address for the jobs it launches after the server started); None when the
        server cannot fork (spawn it instead). The command goes through a pipe only the two share."""
        self.served += 1
        command = {"payload": str(payload), "result": str(result), "env": env}
        os.write(self._commands, (json.dumps(command) + "\n").encode())
        reply = self.receive(None)
        if reply.get(SPAWN):
            log.warning("fork server: %s; each job starts a new interpreter instead", reply[SPAWN])
            return None
        return ForkedJob(self, int(reply["pid"]))

    def receive(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                    raise subprocess.TimeoutExpired("fork server", timeout)
            chunk = os.read(self._replies, 65536)
            if not chunk:
                raise RuntimeError(f"the fork server exited (status {self.process.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self, timeout: float = 30.0) -> None:
        """End the server (it exits when its command pipe closes) and wait for it. One that was
        never asked for a job has no child to wait for: it is killed, not left to finish importing."""
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
        if not self.served:
            self.process.kill()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def unsafe_to_fork() -> str | None:
    """Why forking now would be unsafe, or None."""
    if threading.active_count() > 1:
        return f"{threading.active_count() - 1} threads started by the imports"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA was initialised before the fork"
    return None


def run_child(payload: str, result: str, env: dict[str, str]) -> int:
    """In the forked child: the job, as a spawned process runs it; its exit status."""
    from sweep.launcher import job_process

    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (the server ignores Ctrl-C; a job must not)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    random.seed()  # (a new interpreter would not share the server's random state)
    try:
        job_process.main(payload, result)
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve(commands_fd: int, replies_fd: int) -> None:
    """The server's loop: one forked child per command line, its pid and then its exit status. It
    ends when the launcher closes the command pipe (or stops reading the replies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the job and the launcher; the server reports

    def reply(message: dict) -> bool:
        try:
            os.write(replies_fd, (json.dumps(message) + "\n").encode())
            return True
        except BrokenPipeError:  # (the launcher has gone)
            return False

    for name in PRELOAD:
        importlib.import_module(name)
    # (imported here, not at the top: the launcher imports this module for ForkServer only, and MLflow
    # there would cost the sweep's own process 4 s of imports before it could start the server)
    from sweep.runtime import memory
    from sweep.scoring import environment_once
    from sweep.tracking import records

    records.installed_packages()  # (read once here, not in every child)
    environment_once.environment()  # lm-eval's description of the environment (0.5 s of subprocesses), once too
    memory.freeze_long_lived()  # (before fork: the children's collections leave these pages shared)
    commands = os.fdopen(commands_fd, "rb")
    for line in commands:
        request, unsafe = json.loads(line), unsafe_to_fork()
        if unsafe:
            if not reply({SPAWN: unsafe}):
                return
            continue
        pid = os.fork()
        if pid == 0:
            commands.close()
            os.close(replies_fd)
            os._exit(run_child(request["payload"], request["result"], request["env"]))
        started = reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        if not started or not reply({"pid": pid, "code": os.waitstatus_to_exitcode(status)}):
            return


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
