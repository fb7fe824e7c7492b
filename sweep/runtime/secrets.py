"""One redaction for everything that leaves the process: params, tags, artifacts, reports, logs,
errors, tracebacks and Hydra's saved configs.

Why our own: MLflow, Optuna, Hydra and SQLAlchemy each print the URLs they were given (MLflow's
"View run ... at <tracking URI>", Hydra's "Error executing job with overrides", SQLAlchemy hides
only the password of its own URL objects). So every URL in outgoing text is parsed (not matched
by a pattern) and its credentials masked: a password, a user-only token (`https://TOKEN@host`),
and secret query values (`?password=`, `?token=`). The credentials of the store variables are
also masked wherever they appear literally, URL or not (a driver may echo them in an error).
`guard_output()` installs this on logging records, sys.stdout/stderr and uncaught tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

MASK = "***"
# Query keys whose values are credentials (compared lower-case).
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "pass", "token", "access_token", "auth_token",
                               "api_key", "apikey", "key", "secret", "client_secret", "sig", "signature",
                               "sslpassword", "x-amz-signature", "x-amz-credential", "x-amz-security-token"})
# Environment variables (MLflow's, Optuna's, PostgreSQL's and ours) that hold store URLs, whose
# credentials are secret, and those that are secrets whole.
URL_VARIABLES = ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "MLFLOW_BACKEND_STORE_URI", "DATABASE_URL")
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")
# Where a URL may start in free text: a scheme and "://"; urlsplit decides the rest. The candidate
# stops at whitespace, quotes, brackets of lists and reprs, and markup.
_CANDIDATE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>\[\]{}|\\]+")
_MIN_LITERAL = 4  # shorter "secrets" would mask ordinary words


def redact_url(url: str) -> str:
    """`url` with its credentials replaced by ***; anything that does not parse comes back as is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"  # user alone: a token
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
            query = "&".join(f"{quote(k, safe='')}={MASK if k.lower() in SECRET_QUERY_KEYS else quote(v, safe='')}"
                             for k, v in pairs)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    scheme = url.split("://", 1)[0]  # (as written: urlunsplit would drop the // of scheme:///path)
    return (f"{scheme}://{netloc}{parts.path}" + (f"?{query}" if "?" in url else "")
            + (f"#{parts.fragment}" if "#" in url else ""))


def credentials(url: str) -> set[str]:
    """The secrets inside a URL: its password, user-only token and secret query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found = set()
    if "@" in parts.netloc:
        user, has_password, password = parts.netloc.rsplit("@", 1)[0].partition(":")
        found |= {unquote(password), password} if has_password else {unquote(user), user}
    found |= {v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_QUERY_KEYS}
    return found


def known_secrets() -> list[str]:
    """Credentials held by this process's store variables, longest first."""
    found = {os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)}
    for name in URL_VARIABLES:
        found |= credentials(os.environ.get(name, ""))
    return sorted((s for s in found if len(s) >= _MIN_LITERAL), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it, and every known secret, masked."""
    if not text:
        return text
    text = _CANDIDATE.sub(lambda m: redact_url(m.group(0)), text)
    for secret in known_secrets():
        text = text.replace(secret, MASK)
    return text


class _RedactingStream:
    """A text stream that redacts what is written to it (prints, tracebacks, progress bars)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_output() -> None:
    """Redact every logging record, everything written to sys.stdout/stderr and uncaught
    tracebacks in this process. Entry points call it first; calling it again does nothing."""
    old_factory = logging.getLogRecordFactory()
    if getattr(old_factory, "redacts", False):
        return

    def factory(*args, **kwargs):
        record = old_factory(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.redacts = True
    logging.setLogRecordFactory(factory)
    sys.stdout, sys.stderr = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)


def redact_file(path: Path) -> None:
    """Rewrite `path` with its credentials masked (when it has any)."""
    if path.is_file():
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)


class RedactSavedConfigs(Callback):
    """Hydra saves the command line as given (a `tracking.uri=` with its password, say) in each
    job's `.hydra/{overrides,hydra,config}.yaml` and a grid's `multirun.yaml`; mask them as soon as
    they are written, and the sweep's file again at its end."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        hydra = HydraConfig.get()
        if hydra.output_subdir is not None:
            for path in (Path(hydra.runtime.output_dir) / hydra.output_subdir).glob("*.yaml"):
                redact_file(path)
        if hydra.mode == RunMode.MULTIRUN:
            redact_file(Path(hydra.sweep.dir) / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        redact_file(Path(config.hydra.sweep.dir) / "multirun.yaml")
