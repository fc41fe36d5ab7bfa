"""Typed errors with messages meant for the person running the job."""

from __future__ import annotations

import signal


class AdrecError(Exception):
    """Base class: every error a job reports to its user without a stack trace."""


class ConfigError(AdrecError):
    """A config file, key or value is wrong."""


class InputDataError(AdrecError):
    """Input data is missing, empty or lacks required columns."""


class MissingColumnsError(InputDataError):
    """A DataFrame lacks columns a transform needs."""

    def __init__(self, where: str, missing: list[str], available: list[str]) -> None:
        self.where = where
        self.missing = sorted(missing)
        super().__init__(
            f"{where}: missing column(s) {', '.join(self.missing)}; "
            f"available: {', '.join(sorted(available)) or '(none)'}"
        )


class ModelResolutionError(AdrecError):
    """A model, version or alias cannot be found or loaded."""


class TrainingDataError(InputDataError):
    """The training set cannot be used (empty, one class, ...)."""


class WriteConflictError(AdrecError):
    """A Delta write kept conflicting with concurrent writers after the allowed retries."""


class JobTerminated(BaseException):
    """The process was told to stop (SIGTERM: a scheduler's timeout, a preempted node) while a job ran.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way (a retry loop,
    Py4J's own error handling) swallows it; :func:`adrec_spark.io.tables.partition_unit` rolls back on it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")
