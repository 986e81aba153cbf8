"""The one exception type users see: a short message naming the file, field or line at fault."""

from __future__ import annotations


class RaydrError(Exception):
    """Bad input (config, data, checkpoint, CLI argument).

    The CLI prints ``str(err)`` on one line and exits with status 2, never a traceback.
    Messages name *where* (file, field, line) and *what was expected*.
    """
