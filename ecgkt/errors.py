"""User-facing errors. The CLI prints them as one line (``ecgkt: error: <file>: <problem>``, no
traceback) on standard error and exits with status 2; ``predict`` exits 1 when only some inputs failed.
File-system errors (a full disk, permissions) are reported the same way."""


class ECGKTError(Exception):
    """A problem with the user's input or setup, explained in one line."""


class RecordError(ECGKTError, ValueError):
    """A record that cannot be read or used: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable, so a worker process can report it
        return (type(self), (self.path, self.problem))
