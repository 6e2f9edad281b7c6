"""The one exception type users see.

Every mistake a user can make (bad data, bad config, unknown release, damaged registry) raises
:class:`IntentCIError` with a message that says where, what was wrong and what was expected.
The CLI prints the message without a traceback and exits with status 2, except for
:class:`LatestMovedError` (status 1: the work was kept, but ``LATEST`` did not move).
"""

from __future__ import annotations


class IntentCIError(Exception):
    """A user-facing error: bad input, bad configuration or a registry that fails its checks."""


class ReleaseVerificationError(IntentCIError):
    """A release on disk does not match its manifest (hashes, sizes, backbone or label map)."""


class LatestMovedError(IntentCIError):
    """A release was written, but ``LATEST`` did not move to it: another run moved it first.

    Raised by `Registry.commit` when ``LATEST`` no longer points where it did when the run
    started. Moving it anyway would drop the other run's new intents from ``latest``.

    Attributes:
        release: the release that was written.
        latest: the release ``LATEST`` points to (the other run's), or None.
    """

    def __init__(self, release: str, latest: str | None, message: str) -> None:
        super().__init__(message)
        self.release, self.latest = release, latest

    def __reduce__(self):  # picklable, so it can cross process boundaries
        return (type(self), (self.release, self.latest, str(self)))
