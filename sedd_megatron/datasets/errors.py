"""The one exception type the data tools raise for bad input: the CLIs print it and exit 2."""


class DataError(ValueError):
    """Bad input data or settings; the message names the problem (and the file/line if any)."""
