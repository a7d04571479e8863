"""The errors a user can meet and fix: each message is one line saying what, which file, why and what to do.

``domgen.run`` prints these as ``error: <message>`` without a traceback; anything else that escapes is a
bug and is printed with its traceback and a request for a report.
"""

from __future__ import annotations

from pathlib import Path


class DomgenError(Exception):
    """An expected failure with a message written for the person at the keyboard."""


class ConfigError(DomgenError, ValueError):
    """A config value that cannot work (``optim.epochs=0``, an unknown loss name ...)."""


class RunFolderError(DomgenError):
    """A run folder in a state the command will not touch without being told (unfinished, locked).

    ``retry_flag``: the flag that makes the same command proceed (``--resume``, ``--wait``), which the
    command line turns into the full command to type."""

    def __init__(self, message: str, run_dir: Path | None = None, retry_flag: str | None = None):
        super().__init__(message)
        self.run_dir, self.retry_flag = run_dir, retry_flag


class RunLocked(RunFolderError):
    """Another live process owns the run folder."""


class CheckpointError(DomgenError):
    """No loadable checkpoint where one was needed (empty, truncated or not a checkpoint)."""


class LaunchError(DomgenError, RuntimeError):
    """A sweep cannot be launched or a job would write where the plan did not say."""


class ImageDecodeError(DomgenError):
    """An image file whose header opens but whose pixels cannot be decoded (e.g. a truncated JPEG)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training; ``epoch`` epochs are safely checkpointed in ``run_dir``.

    A KeyboardInterrupt, so that whoever treats interruptions as resumable (the sweep) still does."""

    def __init__(self, run_dir: Path, epoch: int):
        super().__init__(f"interrupted after epoch {epoch}")
        self.run_dir, self.epoch = Path(run_dir), epoch
