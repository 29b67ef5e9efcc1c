"""Prototxt (protobuf text format) reading and writing, with errors that
name the file, line and column."""
import os

from google.protobuf import text_format

from .atomic import atomic_write
from .files import read_text_file


class PrototxtError(ValueError):
    """A prototxt file that does not parse; the message is file:line:column: reason."""


def parse_text(text, message, source="<string>"):
    """Parse prototxt `text` into `message` (merging repeated fields as
    protobuf's text parser does) and return it."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        reason = str(err)
        # protobuf prefixes its own "line:column : " position; keep only the reason.
        prefix = f"{line}:{column} : "
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
        where = f"{source}:{line}:{column}" if line is not None else source
        raise PrototxtError(f"{where}: {reason} (while reading {message.DESCRIPTOR.name})") from None
    return message


def read_text(path, message):
    """Parse the prototxt file at `path` into `message`; an OSError naming
    the file when it cannot be read, a PrototxtError when it is not text
    or does not parse."""
    path = os.fspath(path)
    text = read_text_file(path, "prototxt", PrototxtError)
    return parse_text(text, message, source=path)


def to_text(message):
    return text_format.MessageToString(message)


def write_text(message, path):
    with atomic_write(path, "w") as f:
        f.write(to_text(message))
