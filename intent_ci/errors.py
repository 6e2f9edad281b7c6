"""The one exception type users see.

Every mistake a user can make (bad data, bad config, unknown release, damaged registry) raises
:class:`IntentCIError` with a message that says where, what was wrong and what was expected.
The CLI prints the message without a traceback and exits with status 2.
"""

from __future__ import annotations


class IntentCIError(Exception):
    """A user-facing error: bad input, bad configuration or a registry that fails its checks."""


class ReleaseVerificationError(IntentCIError):
    """A release on disk does not match its manifest (hashes, sizes, backbone or label map)."""
