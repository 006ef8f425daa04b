"""The one exception m3sh tasks raise when part of a run failed for reasons a retry cannot fix."""

from __future__ import annotations

from m3sh.compat import AirflowFailException


class RunFailed(AirflowFailException):
    """Fails the task without retrying; ``records`` lists what failed (files, bills, accounts) so the
    alert can name them."""

    def __init__(self, message: str, records: list[str]) -> None:
        super().__init__(message)
        self.records = records
