"""The error raised for unreadable data files, databases and images."""


class DataError(ValueError):
    """A database, list file or image that cannot be read or does not hold
    what was expected; the message names the file (and the entry)."""
