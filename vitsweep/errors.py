"""How every vitsweep command fails: one line on stderr naming what is wrong, secrets masked,
a non-zero exit. Used by the CLI and by the Hydra sweeper alike (errors raised inside Hydra's
sweep would otherwise print Hydra's stack)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from vitsweep.spec import ConfigError

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def mask_url(text: str) -> str:
    """`postgresql://u:secret@h/db` -> `postgresql://u:***@h/db`, anywhere inside `text`."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `vitsweep: error: <message>` (one line, masked) and exit with `code`."""
    line = " ".join(mask_url(str(message)).split())
    print(f"vitsweep: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def unexpected(e: BaseException) -> str:
    """One line for an error nobody anticipated: its type and first line, and how to see more."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0][:300] if lines else ""
    return f"{type(e).__name__}: {first} (HYDRA_FULL_ERROR=1 shows the traceback)"


def full_error_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


class Fatal(RuntimeError):
    """An expected stop whose message says why (e.g. a study's failure budget is spent)."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Every command's outermost frame: 2 for bad input (a ConfigError names the key or file),
    1 for a run that cannot go on, one line each; Hydra would print a stack for anything a
    sweeper raises. HYDRA_FULL_ERROR=1 keeps the traceback of the unexpected ones."""
    try:
        yield
    except ConfigError as e:
        fail(str(e), 2)
    except Fatal as e:
        fail(str(e), 1)
    except Exception as e:
        if full_error_wanted():
            raise
        fail(unexpected(e), 1)
