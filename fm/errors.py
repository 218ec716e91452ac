"""The one user-error type: a bad config, flag, path or workdir, explained in one sentence.

The command line prints it as `fm: error: <sentence>` and exits with status 2
before touching anything; library code raises it wherever user input is wrong.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
  """Bad user input; the message is one sentence naming the bad value and the valid choices."""
