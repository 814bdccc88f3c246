"""User-facing errors."""


class SSKTError(Exception):
    """A problem with the user's input: printed by the CLI as one line naming the problem and the fix."""
