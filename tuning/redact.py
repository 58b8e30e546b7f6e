"""Secrets kept out of files, run parameters, logs and printed lines.

A tracking or database URI may carry a password (`postgresql://alice:PASSWORD@host/db`) or a token
(`https://host/?token=...`). What the search writes or prints shows it as `***`; the real URI is
only ever read from the command line or the environment (`MLFLOW_TRACKING_URI`).
"""
from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<secret>[^@/\s]+)@")
# ?token=..., &password=..., &access_key=..., &sig=... in a query string
_QUERY = re.compile(r"(?P<head>[?&](?:token|password|passwd|pwd|secret|key|access_key|secret_key|api_key|sig|"
                    r"signature|auth|authorization)=)(?P<secret>[^&\s#]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the passwords and tokens of any URIs in it replaced by ***."""
    if not isinstance(text, str):
        return text
    return _QUERY.sub(lambda m: m["head"] + MASK, _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text))


def has_secret(text: str | None) -> bool:
    return bool(text) and redact(text) != text
