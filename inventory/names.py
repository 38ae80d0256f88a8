"""The one rule for a name that can end up in a path or a remote command: a fleet's, a host's,
a matrix's, a profile's (and a results folder's where a default output is named after it)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_LENGTH = 63
# Matched whole (fullmatch): a `$` would also accept a trailing newline. Starting alphanumeric
# leaves out '.', '..' and a leading '-'; no '/' leaves out every path.
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_LENGTH - 1}}}")
NAME_RULE = f"must be 1-{NAME_LENGTH} letters, digits, '-', '_' or '.', starting alphanumeric"


def check_name(name: str) -> str:
    """`name` if it is a name by the one rule, else ValueError saying the rule."""
    if not _NAME.fullmatch(name):
        raise ValueError(NAME_RULE)
    return name


Name = Annotated[str, AfterValidator(check_name)]
"""A name by the one rule, as a pydantic field."""
