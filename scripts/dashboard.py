"""`make dashboard [STORAGE=<url>]`: optuna-dashboard over any study storage: STORAGE, else
$OPTUNA_STORAGE (a team's PostgreSQL, as `source .services/env` sets it), else the local journal
file the sweeps write by default.

Why a script and not `optuna-dashboard <url>`: a URL on a command line shows its password to
anyone who runs `ps`; here it arrives in the environment, is opened with the sweeper's own storage
(which reconnects through a database restart), and is printed with the password masked.

    python scripts/dashboard.py [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweep.config import ConfigError  # noqa: E402
from sweep.runtime.secrets import guard_output, redact  # noqa: E402
from sweep.study.storage import make_storage, storage_url, unopened_journal  # noqa: E402

log = logging.getLogger("dashboard")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="where it listens (default: this machine only)")
    ap.add_argument("--port", type=int, default=8080)
    return ap


def main(argv: list[str] | None = None) -> int:
    guard_output()
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = storage_url(None, str(ROOT / "optuna.journal"))
    try:
        if unopened_journal(url):
            raise ConfigError(f"no study storage at {url} yet: run a sweep (hydra/sweeper=optuna) first, or name a "
                              "team's with STORAGE=postgresql+psycopg://... (or $OPTUNA_STORAGE)")
        storage = make_storage(url)
    except ConfigError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    import optuna_dashboard

    log.info("optuna-dashboard on http://%s:%d over %s", a.host, a.port, redact(url))
    optuna_dashboard.run_server(storage, host=a.host, port=a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
