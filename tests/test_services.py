"""scripts/services.py's own steps, without the servers: stopping a process group that ends at an
awkward moment."""
from __future__ import annotations

import signal
import subprocess
import sys

from scripts import services


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
