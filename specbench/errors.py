"""The one exception type the API raises for bad input; the CLI turns it into one line and exit 2."""


class SpecbenchError(ValueError):
    """Bad input to specbench: a missing file, an invalid option, a prompt that does not fit."""
