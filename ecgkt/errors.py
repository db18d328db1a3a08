"""User-facing errors. The CLI prints them as one line (no traceback) and exits non-zero."""


class ECGKTError(Exception):
    """A problem with the user's input or setup, explained in one line."""


class RecordError(ECGKTError, ValueError):
    """A record that cannot be read or used: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
