"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """A problem with the user's input (path, file, shape, option); message is shown as is."""
