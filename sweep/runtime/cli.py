"""One command-line shell for the project's programs (reproduce.py, confirm.py, the report and the
summary, make check-store, upload and promote, the sweep's first check and its sweeper): the
argument they share and the one-line refusal. Why one: the refusal is a promise (one line, exit
status 2, nothing else), and a message may carry store text (escape sequences shown, not obeyed)
or a URL with a password (masked), so it is written once."""

from __future__ import annotations

import re
import sys

from sweep.config import default_tracking_uri
from sweep.runtime.secrets import redact

# C0 and C1 control characters (ESC starts terminal sequences; CR and BS overwrite what is shown).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value) -> str:
    """`value` as text with control characters (terminal escapes, carriage returns, newlines)
    shown as U+FFFD."""
    return CONTROL.sub("\ufffd", str(value))


def refuse(error, code: int = 2) -> int:
    """`error: <message>` on stderr, redacted and on one line; `code`, for the exit status."""
    print(f"error: {printable(redact(str(error)).strip())}", file=sys.stderr, flush=True)
    return code


def add_tracking_uri(parser) -> None:
    """The store a program reads: --tracking-uri, default $MLFLOW_TRACKING_URI, else the project's."""
    parser.add_argument("--tracking-uri", default=default_tracking_uri(),
                        help="default: $MLFLOW_TRACKING_URI, else <project>/mlflow.db")
