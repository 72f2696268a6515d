"""One exception type for every problem a user can fix; the CLI prints it as one line, no traceback."""


class GemmaEdgeError(Exception):
    """A user-facing error: the message names the file or input at fault and how to fix it."""
