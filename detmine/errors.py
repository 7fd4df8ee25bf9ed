"""Exceptions whose message is a complete, one-line explanation for the user.

The command-line tools catch :class:`DetmineError` and print ``error: <message>``
without a traceback, so every message must name the file / key / value at fault
and what was expected.
"""


class DetmineError(Exception):
    """Base class: a user-facing error with a one-line message."""


class ConfigError(DetmineError):
    """A config key, type or value is wrong (message names the key and the valid choices)."""


class OptionError(ConfigError, ValueError):
    """A component's option has a bad value. The component names only its ``option`` (it does
    not know under which config key it was registered); the component table that built it
    prefixes the key the user wrote (``mining.ohem.nms_iou must be ...``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option} {message}")
        self.option = option
        self.message = message


class DataError(DetmineError):
    """A dataset file, annotation or split is unusable (message names the file and the item)."""


class CheckpointError(DetmineError):
    """A checkpoint or weights file is missing, corrupt or does not fit the model."""


class NonFiniteError(DetmineError):
    """A tensor that must be finite (logits, a loss) contains NaN or Inf."""


class TrainingInterrupted(DetmineError):
    """Training stopped on SIGINT / SIGTERM after writing a checkpoint; ``exit_code`` is the
    shell's convention (128 + signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
