"""What stops training, by exit status: bad input (2) or a failed run (1)."""


class TrainingDataError(ValueError):
    """The command line, labels, lists, split or weights cannot be trained on; the message says
    what and where. Exit status 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the checkpoints before it are kept. Exit status 1."""
