"""Error types. Each names the file, field or value at fault so a user can act on it."""

import functools
import sys


class MellmError(Exception):
    """Base class for errors the user can fix (bad input, bad config). The CLI prints these
    without a traceback."""


class LabelError(MellmError, ValueError):
    """A label (AU code, emotion, class) that is not in the vocabulary."""


class ClipError(MellmError):
    """A clip cannot be used. `reason` is a short machine-readable tag for failure files."""

    reason = "clip"


class ClipNotFoundError(ClipError, FileNotFoundError):
    reason = "not_found"


class UnreadableClipError(ClipError):
    reason = "unreadable"


class ClipTooLargeError(ClipError):
    """More frames or pixels than the configured limits (mellm.video.ClipLimits) allow."""

    reason = "too_large"


class EmptyClipError(ClipError):
    reason = "empty"


class FrameRangeError(ClipError, ValueError):
    reason = "frame_range"


class NoFaceError(ClipError):
    reason = "no_face"


class ConfigError(MellmError, ValueError):
    """A config file or override that cannot be used."""


def user_errors(fn):
    """For CLI commands: a MellmError (bad input, bad config) or an OSError (a path that cannot be
    read or written: it names the file) is printed as one red line and the process exits with
    status 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MellmError, OSError) as e:
            import typer

            typer.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)

    return wrapper
