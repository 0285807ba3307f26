"""The one exception type for bad user input.

Anything the user can fix (a flag, a path, a malformed file) raises `UserError`
with a message that says what is wrong and how to fix it; `main` prints it as a
single line and exits with code 2. Internal invariants use `assert`.
"""


class UserError(Exception):
    """Bad input from the user; the message is shown as one line, exit code 2."""

    def __init__(self, message: str = ""):
        # Raised in a DataLoader worker, it comes back to the main process as UserError(PyTorch's report:
        # "Caught UserError in DataLoader worker process N", the worker's traceback, then its own line).
        if message.startswith("Caught ") and "DataLoader worker" in message.split("\n", 1)[0]:
            message = message.rstrip().rsplit("\n", 1)[-1].partition(": ")[2]
        super().__init__(message)


class ReportedElsewhere(UserError):
    """Under torchrun: this process stops because another one failed. Process 0 prints the line
    (naming that process); the others exit with code 2 without a word (training/stop.py)."""
