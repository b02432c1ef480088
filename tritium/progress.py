"""What `tritium serve` shows while tritonserver loads its models, instead of silence.

Loading a large model takes minutes. `LoadingReport` follows tritonserver's log and
repeats the lines that tell how loading goes: Triton's own (`loading: NAME:1`,
`successfully loaded 'NAME'`, failures) and the engine's (`tritium-engine[NAME]: ...`:
weights file by file, the KV cache, ready in N s); after a quiet spell it says how long
it has been waiting.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

# The engine's log lines inside Triton's log (engine.triton_model sets this prefix).
ENGINE_PREFIX = "tritium-engine["
# Triton's glog lines: `I1202 15:02:55.611974 26700 model_lifecycle.cc:472] "loading: m:1"`.
_TRITON_LINE = re.compile(r'^[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "(?P<message>.*)"$')
_TRITON_LOADING = re.compile(r"^(loading: |successfully loaded |failed to load |.*failed)")


def loading_message(line: str) -> str | None:
    """The part of a log line worth showing while models load, or None."""
    line = line.rstrip()
    if line.startswith(ENGINE_PREFIX):
        return line
    match = _TRITON_LINE.match(line)
    if match and _TRITON_LOADING.match(match["message"]):
        return match["message"]
    return None


class LoadingReport:
    """Call `poll()` while waiting; it prints what is new in the log since the last call."""

    def __init__(
        self,
        log_path: Path,
        say: Callable[[str], None],
        quiet_seconds: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_path = log_path
        self.say = say
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self.started = self.last_said = clock()
        # From the start: serve writes each tritonserver's log afresh.
        self.offset = 0
        self.pending = b""  # a line not yet complete

    def poll(self) -> None:
        for line in self._new_lines():
            message = loading_message(line)
            if message is not None:
                self._say(message)
        waited = self.clock() - self.started
        if self.clock() - self.last_said >= self.quiet_seconds:
            self._say(f"still loading ({waited:.0f} s)")

    def _say(self, message: str) -> None:
        self.say(message)
        self.last_said = self.clock()

    def _new_lines(self) -> list[str]:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except OSError:
            return []
        self.offset += len(chunk)
        *complete, self.pending = (self.pending + chunk).split(b"\n")
        return [line.decode(errors="replace") for line in complete]
