"""A team's servers on one machine: PostgreSQL 15 (the study and tracking database) and an
`mlflow server` whose backend store is that PostgreSQL and which serves the artifacts itself.

    python scripts/services.py start [--root .services] [--pg-port 55432] [--mlflow-port 5000]
    python scripts/services.py stop  [--root .services]

`make services` / `make services-stop` run these; the test suite starts its own pair through a
session fixture. Both bind 127.0.0.1 only. PostgreSQL's `initdb` refuses to run as root, so as
root the cluster is created and run as the `postgres` user.

Only the owner of the services folder reaches the databases: every connection, through the socket
or over TCP, needs a password (scram-sha-256; no `trust`), the socket lives in a folder only the
cluster's user may enter (0700) and is itself 0700, and the passwords (the superuser's, the role's)
are generated here, written to files created private (0600, never readable by others even for an
instant), handed to psql through its environment and to the server through psql's standard input,
never on a command line (`ps` shows command lines to everyone). The role's password is kept in
`<root>/env` (0600), the file to `source`; it is never printed.

The tracking server is MLflow's own basic-auth app (`mlflow server --app-name basic-auth`): every
request but /health needs the user and password that `<root>/env` exports as
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's client reads them); anonymous users get
no permission. Its settings file (`<root>/basic_auth.ini`, 0600; its user store `<root>/basic_auth.db`,
a SQLite file, so that the cluster being away gives retried server errors, not 401s) and the admin
password and the CSRF key reach the server through files and its environment, never its command line.

Why a script of our own: PostgreSQL and `mlflow server` are the ecosystem's servers, run as
their docs say; what is ours is only the few steps that tie them together (a role, two
databases, the URIs), which no package does for a project folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote, urlsplit

from sweep.runtime.processes import alive  # (a zombie is not alive)

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ROLE = "sftsweep"
DATABASES = ("mlflow", "optuna")
MLFLOW_USER = ROLE  # the basic-auth admin the clients log in as
log = logging.getLogger("services")


class ServiceError(RuntimeError):
    pass


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL's tools refuse root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode:
        raise ServiceError(f"{Path(cmd[0]).name if cmd[0] != 'runuser' else cmd[4]} failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done


def write_private(path: Path, text: str, owner: str | None = None) -> None:
    """Write `text` to a file that is 0600 from its creation (O_EXCL: never an older file of another
    mode), owned by `owner` when given (as root)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if owner and os.geteuid() == 0:
        shutil.chown(tmp, owner, owner)
    tmp.replace(path)


def password_of(root: Path, name: str = "password", owner: str | None = None) -> str:
    """A password generated on first start and kept beside the cluster, in a private file."""
    path = root / name
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24), owner)
    return path.read_text().strip()


def storage_url(root: Path, pg_port: int, database: str) -> str:
    return f"postgresql+psycopg://{ROLE}:{quote(password_of(root), safe='')}@{HOST}:{pg_port}/{database}"


def start_postgres(root: Path, port: int) -> None:
    cluster, data, sock = root / "pg", root / "pg" / "data", root / "pg" / "run"
    owner = "postgres" if os.geteuid() == 0 else None
    cluster.mkdir(parents=True, exist_ok=True)
    if owner:  # the postgres user must reach the folder and own the cluster
        for p in [*reversed(cluster.resolve().parents), cluster.resolve()]:
            if not os.stat(p).st_mode & 0o001:
                raise ServiceError(f"{p} is not searchable by the postgres user; chmod o+x it or pass --root elsewhere")
        shutil.chown(cluster, owner, owner)
    sock.mkdir(mode=0o700, exist_ok=True)  # (only the cluster's user enters it: the socket is reached by no one else)
    sock.chmod(0o700)
    if owner:
        shutil.chown(sock, owner, owner)
    hba = data / "pg_hba.conf"
    if (data / "PG_VERSION").exists() and (not (cluster / "superuser-password").exists()
                                           or " trust" in run(as_postgres(["cat", str(hba)])).stdout):
        raise ServiceError(f"{data} is a cluster made before connections needed a password (anyone on this machine "
                           f"could use it): stop it (make services-stop), remove {cluster} and start again")
    superuser = password_of(cluster, "superuser-password", owner)
    if not (data / "PG_VERSION").exists():
        run(as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile",
                         str(cluster / "superuser-password"), "--auth-local=scram-sha-256",
                         "--auth-host=scram-sha-256", "-E", "UTF8"]))
    status = subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "status", "-D", str(data)]), capture_output=True)
    if status.returncode != 0:  # not running yet
        opts = (f"-c listen_addresses={HOST} -p {port} -k {sock} -c unix_socket_permissions=0700 "
                "-c max_connections=200")
        run(as_postgres([str(PG_BIN / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data),
                         "-l", str(cluster / "postgres.log"), "-o", opts]))
    as_superuser = {"env": os.environ | {"PGPASSWORD": superuser}}  # (psql reads it; no command line shows it)
    psql = as_postgres([str(PG_BIN / "psql"), "-h", str(sock), "-p", str(port), "-U", "postgres", "-w", "-v",
                        "ON_ERROR_STOP=1", "-tA"])
    exists = run([*psql, "-c", f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'"], **as_superuser).stdout.strip()
    password = password_of(root).replace("'", "''")
    verb = "ALTER" if exists else "CREATE"
    run(psql, input=f"{verb} ROLE {ROLE} LOGIN PASSWORD '{password}';\n", **as_superuser)  # (standard input)
    for db in DATABASES:
        if not run([*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{db}'"], **as_superuser).stdout.strip():
            run([*psql, "-c", f"CREATE DATABASE {db} OWNER {ROLE}"], **as_superuser)


def start_mlflow(root: Path, pg_port: int, port: int, timeout: float = 180) -> None:
    pidfile, logfile = root / "mlflow.pid", root / "mlflow.log"
    if pidfile.exists() and alive(int(pidfile.read_text())):
        return
    mlflow = Path(sys.executable).parent / "mlflow"
    auth = root / "basic_auth.ini"
    # The user store is a SQLite file of the owner's, not the PostgreSQL cluster: a request that
    # finds the cluster away must get the server error MLflow's client retries, never a 401 (the
    # auth app answers 401 when it cannot read its users). Checked passwords are cached for a
    # minute (MLflow's PBKDF2 check per request is costly), the staleness only of a changed password.
    users = root / "basic_auth.db"
    if not users.exists():
        write_private(users, "")  # (an empty file is an empty SQLite database; it keeps its 0600 mode)
    write_private(auth, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                        f"database_uri = sqlite:///{users.resolve()}\n"
                        f"admin_username = {MLFLOW_USER}\nauth_cache_ttl_seconds = 60\n")
    env = os.environ | {"MLFLOW_BACKEND_STORE_URI": storage_url(root, pg_port, "mlflow"),  # (none on the command line)
                        "MLFLOW_AUTH_CONFIG_PATH": str(auth.resolve()),
                        "MLFLOW_AUTH_ADMIN_PASSWORD": password_of(root, "mlflow-password"),
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": password_of(root, "mlflow-secret-key"),
                        # no job runner: its four huey consumers (GenAI scorers, trace roll-ups: nothing this
                        # project asks of a server) each take an interpreter's start-up and poll all along
                        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    cmd = [str(mlflow), "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(port), "--workers", "2",
           "--artifacts-destination", str((root / "mlartifacts").resolve())]
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=lambda: os.umask(0o077))  # (its artifacts and database: the owner's)
    pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"mlflow server exited with {proc.returncode}; see {logfile}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ServiceError(f"mlflow server did not answer on port {port} within {timeout:.0f} s; see {logfile}")


def read_env(root: Path) -> dict[str, str]:
    """The variables `write_env` wrote (what `source <root>/env` sets)."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in (root / "env").read_text().splitlines())
    return {k: v.strip("'") for k, v in pairs}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def throwaway_root(prefix: str = "sft-sweep-services-"):
    """Both servers in a fresh temporary folder on free ports, for tests and benchmarks; yields
    the folder (`read_env` gives their environment); stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # (mkdtemp makes it private, and the postgres user must reach the cluster)
    try:
        start(root, free_port(), free_port())
        yield root
    finally:
        stop(root)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def throwaway(prefix: str = "sft-sweep-services-"):
    """As throwaway_root, yielding the servers' environment (MLFLOW_TRACKING_URI, OPTUNA_STORAGE)."""
    with throwaway_root(prefix) as root:
        yield read_env(root)


def stop_postgres(root: Path) -> None:
    """Stop the cluster at once (`pg_ctl stop -m fast`: open connections are terminated)."""
    run(as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(root / "pg" / "data")]))


def pg_port(root: Path) -> int:
    """The port the cluster under `root` listens on (from its environment file)."""
    return urlsplit(read_env(root)["OPTUNA_STORAGE"]).port


def stop_mlflow(root: Path) -> None:
    """Stop the tracking server (SIGTERM to its process group, SIGKILL after 10 s; a group that ends
    just before the SIGKILL is stopped all the same)."""
    pidfile = root / "mlflow.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    with suppress(ProcessLookupError):  # the group may end between a look and a signal
        if alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                if group_gone(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
    pidfile.unlink()


def group_gone(pgid: int) -> bool:
    """Whether no process of the group `pgid` is left (its leader reaped first when it is our own
    child: a zombie still counts as a member, and would hold the wait for its full 10 s)."""
    with suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def mlflow_port(root: Path) -> int:
    return urlsplit(read_env(root)["MLFLOW_TRACKING_URI"]).port


def write_env(root: Path, pg_port: int, mlflow_port: int) -> Path:
    env = root / "env"
    write_private(env, f"export MLFLOW_TRACKING_URI=http://{HOST}:{mlflow_port}\n"
                       f"export MLFLOW_TRACKING_USERNAME={MLFLOW_USER}\n"
                       f"export MLFLOW_TRACKING_PASSWORD='{password_of(root, 'mlflow-password')}'\n"
                       f"export OPTUNA_STORAGE='{storage_url(root, pg_port, 'optuna')}'\n")
    return env


def start(root: Path, pg_port: int, mlflow_port: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    start_postgres(root, pg_port)
    start_mlflow(root, pg_port, mlflow_port)
    env = write_env(root, pg_port, mlflow_port)
    log.info("PostgreSQL on %s:%d (databases %s), MLflow server on http://%s:%d",
             HOST, pg_port, ", ".join(DATABASES), HOST, mlflow_port)
    log.info("to use them: source %s   (MLFLOW_TRACKING_URI=http://%s:%d, MLFLOW_TRACKING_USERNAME=%s, "
             "MLFLOW_TRACKING_PASSWORD=***, OPTUNA_STORAGE=postgresql+psycopg://%s:***@%s:%d/optuna)",
             env, HOST, mlflow_port, MLFLOW_USER, ROLE, HOST, pg_port)


def stop(root: Path) -> None:
    stop_mlflow(root)
    data = root / "pg" / "data"
    if (data / "PG_VERSION").exists():
        subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-D", str(data)]),
                       capture_output=True)
    log.info("stopped the services under %s", root)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[services] %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("start", "stop"))
    ap.add_argument("--root", type=Path, default=ROOT / ".services", help="folder of the cluster, logs and env file")
    ap.add_argument("--pg-port", type=int, default=55432)
    ap.add_argument("--mlflow-port", type=int, default=5000)
    args = ap.parse_args(argv)
    try:
        start(args.root, args.pg_port, args.mlflow_port) if args.action == "start" else stop(args.root)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
