"""How gcloud parses `--condition`, for the stand-in gcloud the bootstrap tests run.

The same steps as googlecloudsdk (command_lib/iam/iam_util.py `_ConditionArgDict`: an
`arg_parsers.ArgDict(spec={expression, title, description, None}, allow_key_only=True)`; calliope/arg_parsers.py
`ArgList.__call__`, `_TokenizeQuotedList`, `ArgDict.__call__`): the value is split on commas, or on the
delimiter DELIM given as a `^DELIM^` prefix (`gcloud topic escaping`); each item is split at its first `=`;
a key outside the spec is refused. So a CEL expression with a comma breaks the flag unless another
delimiter is chosen. tests/ci/test_bootstrap.py checks this against the installed gcloud SDK when there is one.
"""

from __future__ import annotations

import re

SPEC = {"expression": str, "title": str, "description": str, "None": None}
_KEY_OP_VALUE = re.compile(r"([^=]+)([=]?)(.*)", re.DOTALL)


class ArgumentTypeError(Exception):
    pass


def tokenize(value: str) -> list[str]:
    delim = ","
    if value.startswith("^") and "^" in value[1:]:
        delim, value = value[1:].split("^", 1)
        if not delim:
            raise ArgumentTypeError("Invalid delimeter. Please see `gcloud topic flags-file` or `gcloud topic "
                                    "escaping` for information on providing list or dictionary flag values with "
                                    "special characters.")
    if not value:
        return []
    if not value.endswith(delim):
        value += delim
    return value.split(delim)[:-1]


def parse_condition(value: str) -> dict[str, str | None]:
    """`--condition VALUE` as gcloud reads it; ArgumentTypeError with gcloud's message when it refuses."""
    parsed: dict[str, str | None] = {}
    for item in tokenize(value):
        match = _KEY_OP_VALUE.match(item)
        if not match:
            raise ArgumentTypeError(f"Invalid flag value [{item}]")
        key, _op, text = match.groups()
        if key not in SPEC:
            raise ArgumentTypeError(f"valid keys are [{', '.join(sorted(SPEC))}]; received: {key}")
        if SPEC[key] is None:
            if text:
                raise ArgumentTypeError(f"Key [{key}] does not take a value")
            parsed[key] = None
        else:
            parsed[key] = text
    return parsed
