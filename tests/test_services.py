"""scripts/services.py: stopping a process group that ends at an awkward moment; who can reach the
databases and the tracking server (only the owner), and where the passwords go (never a command line, never a readable file)."""
from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scripts import services
from tests.conftest import signed_in


def test_a_server_whose_group_ends_just_before_the_sigkill_is_stopped_without_an_error(tmp_path, monkeypatch):
    """The group outlives every look of the 10-s wait and ends just before the SIGKILL (as a tracking
    server finishing its graceful shutdown did on CI): stopping it is done, the pid file is gone
    (before: ProcessLookupError out of the SIGKILL, failing the fault test that stopped it)."""
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    (tmp_path / "mlflow.pid").write_text(str(server.pid))

    def ends_unseen(pgid: int) -> bool:
        server.wait(timeout=30)  # the SIGTERM ended it, and it is reaped...
        return False  # ...after this look: the wait runs out with the group already gone

    monkeypatch.setattr(services, "group_gone", ends_unseen)
    monkeypatch.setattr(services.time, "sleep", lambda seconds: None)
    services.stop_mlflow(tmp_path)
    assert server.returncode == -signal.SIGTERM
    assert not (tmp_path / "mlflow.pid").exists()


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="acts as another local user (runuser -u nobody): needs root, as CI has")
def test_only_the_owner_reaches_the_servers_and_no_password_is_on_a_command_line_or_readable(monkeypatch):
    """`make services`: another local account (nobody) is refused through the socket and over TCP, as
    the superuser and as the role; every password reaches psql and the server by environment or
    standard input, never argv (which `ps` shows to everyone); the files that hold them are private."""
    seen = []
    real = subprocess.run

    def recorded(cmd, *args, **kwargs):
        seen.append(list(map(str, cmd)))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(services.subprocess, "run", recorded)
    with services.throwaway_root() as root:
        port = services.pg_port(root)
        psql = [str(services.PG_BIN / "psql"), "-w", "-p", str(port), "-d", "optuna", "-c", "SELECT 1"]
        for host in (str(root / "pg" / "run"), services.HOST):
            for user in ("postgres", services.ROLE):
                p = real(["runuser", "-u", "nobody", "--", *psql, "-h", host, "-U", user],
                         capture_output=True, text=True)
                assert p.returncode != 0, (host, user, p.stdout)
                assert "Permission denied" in p.stderr or "password" in p.stderr, p.stderr
        # The owner gets in, with the password the env file holds.
        url = services.read_env(root)["OPTUNA_STORAGE"]
        password = services.password_of(root)
        assert password in url and services.password_of(root / "pg", "superuser-password")
        ok = real([*psql, "-h", services.HOST, "-U", services.ROLE], capture_output=True, text=True,
                  env=os.environ | {"PGPASSWORD": password})
        assert ok.returncode == 0 and ok.stdout.split()[2] == "1", ok.stderr
        # The tracking server answers only its user: anonymous requests (from any local account) get
        # 401 on the API, the artifacts and the UI's data; /health stays open for probes.
        env = services.read_env(root)
        base = env["MLFLOW_TRACKING_URI"]
        for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow-artifacts/artifacts",
                     "/ajax-api/2.0/mlflow/experiments/search?max_results=1", "/get-artifact?path=x&run_uuid=0"):
            with pytest.raises(urllib.error.HTTPError, match="401"):
                urllib.request.urlopen(base + path, timeout=10)
        login = base64.b64encode(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}".encode())
        signed = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1",
                                        headers={"Authorization": f"Basic {login.decode()}"})
        assert urllib.request.urlopen(signed, timeout=10).status == 200
        assert urllib.request.urlopen(base + "/health", timeout=10).status == 200
        server = int((root / "mlflow.pid").read_text())
        shown = Path(f"/proc/{server}/cmdline").read_bytes().decode()  # what `ps` shows everyone
        secrets = [password, services.password_of(root / "pg", "superuser-password"),
                   services.password_of(root, "mlflow-password"), services.password_of(root, "mlflow-secret-key")]
        assert seen and not any(secret in arg for cmd in [*seen, [shown]] for arg in cmd for secret in secrets)
        # no job runner (MLflow's huey consumers: four interpreters polling all along, nothing we ask of it)
        import psutil

        tree = [" ".join(c.cmdline()) for c in psutil.Process(server).children(recursive=True)]
        assert tree and not [c for c in tree if "huey" in c], tree
        for path in (root / "env", root / "password", root / "pg" / "superuser-password", root / "mlflow-password",
                     root / "mlflow-secret-key", root / "basic_auth.ini", root / "basic_auth.db"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        with signed_in(env):  # an artifact through the server: what it writes is the owner's only
            import mlflow

            mlflow.set_tracking_uri(base)
            with mlflow.start_run(experiment_id=mlflow.create_experiment("owner-only")):
                mlflow.log_text("adapter", "adapter/adapter_config.json")
            mlflow.set_tracking_uri("")
        stored = [p for p in (root / "mlartifacts").rglob("*")]
        assert stored and all(not stat.S_IMODE(p.stat().st_mode) & 0o077 for p in stored), stored
        assert stat.S_IMODE((root / "pg" / "run").stat().st_mode) == 0o700


def test_a_private_file_is_never_readable_by_others_even_while_it_is_written(tmp_path, monkeypatch):
    """write_private creates the file 0600 (os.open's mode, under any umask), then writes into it."""
    from scripts import services

    modes = []
    real_fdopen = os.fdopen

    def watching(fd, *args, **kwargs):
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(services.os, "fdopen", watching)
    old = os.umask(0)
    try:
        services.write_private(tmp_path / "secret", "s3cret")
    finally:
        os.umask(old)
    assert modes == [0o600] and (tmp_path / "secret").read_text() == "s3cret"
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
