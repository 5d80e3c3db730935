"""Keep credentials out of logs, error messages and MLflow params.

Two shapes of secret reach text in a pipeline like this one: passwords inside URLs
(``postgresql://user:password@host/db``, ``s3://key:secret@…``) and values of settings whose name
says they are secret (``AWS_SECRET_ACCESS_KEY``, ``…_PASSWORD``, ``…_TOKEN``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "is_secret_name", "redact", "redact_mapping"]

MASK = "***"
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@"
)
_SECRET_NAME = re.compile(
    r"(password|passwd|secret|token|api[_-]?key|access[_-]?key|credential)", re.I
)
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key)[\w.-]*\s*[=:]\s*)(?P<value>[^\s,;'\"]+)",
    re.I,
)


def is_secret_name(name: str) -> bool:
    """True for setting names that hold secrets (``AWS_SECRET_ACCESS_KEY``, ``db_password``)."""
    return bool(_SECRET_NAME.search(name))


def redact(text: str) -> str:
    """``text`` with URL passwords and ``NAME=value`` secrets replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda match: f"{match['scheme']}{match['user']}:{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(lambda match: f"{match['name']}{MASK}", text)


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` fit to log: secret-named entries masked, strings redacted."""
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if is_secret_name(str(key)) and value not in (None, ""):
            cleaned[key] = MASK
        elif isinstance(value, str):
            cleaned[key] = redact(value)
        elif isinstance(value, Mapping):
            cleaned[key] = redact_mapping(value)
        else:
            cleaned[key] = value
    return cleaned
