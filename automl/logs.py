"""What the terminal shows of the library's logging: the CLI (and a trial's worker) calls `configure` once.

Library code (`automl.*`, `trainer.*`) logs through `logging.getLogger(__name__)` and never prints; messages carry
the words a user greps for ("notice:", "warning:", "checked:"). Here INFO goes to stdout (progress and results: epoch
lines, evaluation tables, the leaderboard) and WARNING and above to stderr (notices, warnings), each record as its
bare message. `--quiet` keeps warnings only, `--verbose` adds DEBUG.
"""

from __future__ import annotations

import logging
import sys

PACKAGES = ("automl", "trainer")
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


class _CurrentStream(logging.StreamHandler):
    """A handler writing to whatever sys.stdout or sys.stderr is when a record is emitted (so redirections made
    after `configure`, e.g. by a test's capture, are honoured)."""

    def __init__(self, name: str, low: int, high: int):
        super().__init__()
        self.stream_name, self.low, self.high = name, low, high
        self.addFilter(lambda record: self.low <= record.levelno < self.high)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure(level: int = NORMAL) -> None:
    """Send the packages' records at `level` and above to the terminal (INFO: stdout; WARNING+: stderr). Calling it
    again replaces the handlers it added before, never adds a second pair."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _CurrentStream)]:
            logger.removeHandler(handler)
        logger.addHandler(_CurrentStream("stdout", logging.NOTSET, logging.WARNING))
        logger.addHandler(_CurrentStream("stderr", logging.WARNING, logging.CRITICAL + 1))
        logger.setLevel(level)
        logger.propagate = False
