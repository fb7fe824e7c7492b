"""The tracking group's checks (conf/tracking) and the probe of a tracking server, apart from the
store's module so that checking a command line needs no MLflow import (seconds before any error)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.runtime.files import check_writable
from sweep.runtime.secrets import redact
from sweep.tracking.untrusted import printable

SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # names folders and filters: no path, no quote
REGISTRY_ALIAS = re.compile(r"(?!(?i:latest$|v\d+$))[A-Za-z][A-Za-z0-9_-]{0,63}")  # an alias MLflow's registry takes
                                                                                  # (it reserves latest and v<N>)
PROBE_SECONDS = 5  # a tracking server that does not answer in this time is taken for down


def validate_tracking(tracking: DictConfig) -> None:
    """The tracking keys a job reads before it opens the store."""
    experiment = tracking.experiment
    if not (isinstance(experiment, str) and experiment.strip() and experiment.isprintable()):
        raise ConfigError(f"tracking.experiment={experiment!r} is invalid: name an experiment, e.g. "
                          "tracking.experiment=my-sweep")
    if tracking.tags is not None and not isinstance(tracking.tags, DictConfig):
        raise ConfigError(f"tracking.tags={tracking.tags!r} is invalid: give a mapping, e.g. "
                          "tracking.tags={team:nlp}")
    for key in ("log_adapter", "system_metrics", "register_best"):
        if not isinstance(tracking[key], bool):
            raise ConfigError(f"tracking.{key}={tracking[key]!r} is invalid: must be true or false")
    alias = tracking.register_alias
    if not (isinstance(alias, str) and REGISTRY_ALIAS.fullmatch(alias)):
        raise ConfigError(f"tracking.register_alias={alias!r} is invalid: a letter, then letters, digits, _ or - "
                          "(MLflow reserves latest and v<number>), e.g. tracking.register_alias=champion")
    interval = tracking.system_metrics_interval
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 3600:
        raise ConfigError(f"tracking.system_metrics_interval={interval!r} is invalid: give seconds between samples "
                          "of the machine, e.g. tracking.system_metrics_interval=10")
    check_sqlite_uri(tracking.uri)
    sweep_id = tracking.sweep_id
    if sweep_id is not None and not (isinstance(sweep_id, str) and SWEEP_ID.fullmatch(sweep_id)):
        raise ConfigError(f"tracking.sweep_id={printable(repr(sweep_id))} is invalid: letters, digits, '.', '_' or '-' "
                          "(it names folders), e.g. tracking.sweep_id=2026-12-07_lora")
    name = tracking.run_name
    if name is not None and not (isinstance(name, str) and name.strip() and name.isprintable()):
        raise ConfigError(f"tracking.run_name={printable(repr(name))} is invalid: printable text, e.g. "
                          "tracking.run_name=lora-r8")
    check_artifact_location(tracking.artifact_location, tracking.uri)
    outage = tracking.outage_seconds
    if isinstance(outage, bool) or not isinstance(outage, (int, float)) or not outage > 0:
        raise ConfigError(f"tracking.outage_seconds={outage!r} is invalid: give the seconds a job waits for a tracking "
                          "server that does not answer, e.g. tracking.outage_seconds=900")




SCHEME_CLIENTS = {"s3": "boto3", "gs": "google.cloud.storage", "wasbs": "azure.storage.blob"}


def check_artifact_location(location, uri) -> None:
    """A local artifact location must be writable; a cloud one needs its client library (without it
    the job trains, then fails at its first upload)."""
    if not location or is_server(str(uri)):
        return  # (a server places the artifacts itself)
    scheme = str(location).split("://", 1)[0] if "://" in str(location) else "file"
    if scheme in SCHEME_CLIENTS:
        import importlib.util

        module = SCHEME_CLIENTS[scheme]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError(f"tracking.artifact_location={redact(str(location))!r} needs {module.split('.')[0]}, "
                              f"which is not installed: pip install it, or use a local folder")
    elif scheme == "file":
        check_writable("tracking.artifact_location", location)


def check_sqlite_uri(uri) -> None:
    """A SQLite URI must name a database file: `sqlite:///` alone (what `sqlite:///$UNSET` becomes)
    gives each of MLflow's threads its own empty in-memory database, and the job hangs; a folder
    fails after minutes. (A file in a folder that does not exist yet: the store creates the folder.)"""
    if not (isinstance(uri, str) and uri.startswith("sqlite:")):
        return
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    fix = "give a database file, e.g. tracking.uri=sqlite:///$PWD/mlflow.db"
    if not path or path == ":memory:" or path.endswith("/"):
        raise ConfigError(f"tracking.uri={uri!r} names no database file (an unset variable in sqlite:///$VAR?); {fix}")
    if Path(path).is_dir():
        raise ConfigError(f"tracking.uri={uri!r} names a folder, not a database file; {fix}")


def probe_server(uri: str) -> None:
    """A tracking server that cannot be reached within PROBE_SECONDS, refused in one line: MLflow's
    client would retry for minutes, printing a warning per try. An answer of any kind passes (a
    proxy may guard /health); only no connection fails. Asked once, as a command starts (a job of a
    running sweep rides out a later outage for tracking.outage_seconds: tracking/outage.py)."""
    if uri.startswith(("postgresql", "mysql", "mssql")):
        probe_database(uri)
        return
    if not is_server(uri):
        return
    parts = urlsplit(uri)
    try:  # (without the credentials: /health needs none, and urllib reads user:password@ as part of the host)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        bare = urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""),
                           parts.path.rstrip("/") + "/health", "", ""))
    except (TypeError, ValueError):
        raise ConfigError(f"tracking.uri={redact(uri)!r} is not a URL; give e.g. http://127.0.0.1:5000") from None
    try:
        with urllib.request.urlopen(bare, timeout=PROBE_SECONDS):
            pass
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"tracking.uri={redact(uri)!r} does not answer ({redact(str(reason))[:200]}); start the "
                          f"server (`make services`) or fix the URI") from None


def probe_database(uri: str, key: str = "tracking.uri") -> None:
    """A database server URI whose host does not take a TCP connection within PROBE_SECONDS, refused in
    one line (SQLAlchemy's retries took about two minutes to fail)."""
    import socket

    parts = urlsplit(uri)
    default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[parts.scheme.split("+")[0]]
    try:
        host, port = parts.hostname, parts.port or default
    except ValueError:
        raise ConfigError(f"{key}={redact(uri)!r} is not a URL; give e.g. postgresql://user@127.0.0.1/db") from None
    if not host:
        return  # (a Unix socket: the driver's own error is immediate)
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as e:
        raise ConfigError(f"{key}={redact(uri)!r}: nothing answers at {host}:{port} ({e.strerror or e}); start "
                          f"the database (`make services`) or fix the URI") from None


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))
