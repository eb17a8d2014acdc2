"""The one exception type for what a user can fix."""


class ConfigurationError(ValueError):
    """A setting or an input the user can fix (a path, a split, a column, a method's option, a model without a
    causal-LM head), with a message that says how. The command line reports it in one line (exit status 2); every
    other exception keeps its traceback. A ``ValueError``, so ``except ValueError`` catches it too.

    Example:
        >>> try:
        ...     raise ConfigurationError("forget split is empty")
        ... except ValueError as error:
        ...     print(error)
        forget split is empty
    """
