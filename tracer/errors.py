"""One small exception tree: every error a person can see carries a hint on what to do."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1          # anything else that went wrong
    USAGE = 2          # bad command line (click uses 2 as well)
    BAD_INPUT = 3      # a capture file or other input that cannot be read
    NOT_FOUND = 4      # a pod, node, lab or point that does not exist
    PERMISSION = 5     # needs root / capabilities / RBAC
    CLUSTER = 6        # the Kubernetes API or the lab failed
    NO_ANSWER = 7      # follow: the traced request got no HTTP answer (curl failed); the view is shown
    INTERRUPTED = 130  # Ctrl-C


class TracerError(Exception):
    """Base of all errors tracer reports to a person (one line + a hint, no traceback)."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class CaptureFileError(TracerError):
    """A capture file that cannot be read (corrupt, truncated, unknown format)."""

    exit_code = ExitCode.BAD_INPUT


class UsageError(TracerError):
    exit_code = ExitCode.USAGE


class NotFoundError(TracerError):
    exit_code = ExitCode.NOT_FOUND


class PermissionError_(TracerError):
    """Named with a trailing underscore so it does not shadow the builtin."""

    exit_code = ExitCode.PERMISSION


class LabError(TracerError):
    exit_code = ExitCode.CLUSTER


class ClusterError(TracerError):
    exit_code = ExitCode.CLUSTER
