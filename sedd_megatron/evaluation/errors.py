"""The exception the evaluation tools raise for bad input; the CLIs print it and exit 2."""


class EvalError(ValueError):
    """Bad evaluation input or settings (missing file, empty data, inconsistent options)."""
