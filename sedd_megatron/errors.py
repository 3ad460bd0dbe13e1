"""The exceptions sedd_megatron raises for bad user input, one class per kind of input.

Each names the problem (and the file, field or line) in its message; the command-line tools
print it and exit with status 2. All are :class:`SEDDError` and ``ValueError``, so callers may
catch either. This module imports nothing else of the package (nor Megatron).
"""


class SEDDError(Exception):
    """Base class of the errors below."""


class ConfigError(SEDDError, ValueError):
    """An invalid SEDD configuration (config.json, a --config file or a SEDD flag that
    contradicts the model); the message names the offending field."""


class CheckpointError(SEDDError, ValueError):
    """A checkpoint that is missing, incomplete, unreadable or does not match the SEDD layout
    or its config."""


class DataError(SEDDError, ValueError):
    """Bad input data or data settings for the data tools; the message names the problem (and
    the file/line if any)."""


class EvalError(SEDDError, ValueError):
    """Bad evaluation input or settings (missing file, empty data, inconsistent options)."""


class PromptError(SEDDError, ValueError):
    """An unusable prompt; the message names the problem."""
