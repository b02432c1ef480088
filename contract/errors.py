"""Errors a model reports: a kind (which picks the HTTP status) and a message a person can act on.

A model sends an error as a final Triton response whose message is
``"<kind>: <field>: <what is wrong>"`` (or ``"<kind>: <what is wrong>"`` when no single
field is at fault); `parse_error_message` reads it back on the adapter's side.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    INVALID_REQUEST = "invalid request"  # HTTP 400, `param` = the field
    CONTEXT_LENGTH = "context length"  # HTTP 400, code context_length_exceeded
    UNAVAILABLE = "unavailable"  # HTTP 503: the model cannot serve now (shutting down, failed)
    OVERLOADED = "overloaded"  # HTTP 503: retry later


class ContractError(ValueError):
    """A request the model cannot serve; `field` names the input or sampling field at fault."""

    def __init__(
        self, message: str, field: str | None = None, kind: ErrorKind = ErrorKind.INVALID_REQUEST
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.reason = message
        self.field = field
        self.kind = kind

    @property
    def triton_message(self) -> str:
        """What the model sends back (see the module docstring)."""
        return f"{self.kind.value}: {self}"


@dataclass(frozen=True)
class ParsedError:
    kind: ErrorKind | None  # None: not one of the contract's kinds (Triton's own, or a crash)
    field: str | None
    message: str  # without the kind prefix


_FIELD = re.compile(r"(?P<field>[A-Za-z_][A-Za-z0-9_.]*):\s(?P<text>.*)", re.S)


def parse_error_message(message: str) -> ParsedError:
    """Read a model's error message back into its kind, field and text."""
    stripped = message.strip()
    for kind in ErrorKind:
        # Triton may wrap the model's message ("in ensemble ...: invalid request: ..."): search.
        start = stripped.lower().find(f"{kind.value}:")
        if start == -1:
            continue
        rest = stripped[start + len(kind.value) + 1 :].strip()
        if kind is ErrorKind.INVALID_REQUEST:
            with_field = _FIELD.fullmatch(rest)
            if with_field is not None:
                return ParsedError(kind, with_field["field"], with_field["text"].strip())
        return ParsedError(kind, None, rest)
    return ParsedError(None, None, stripped)
