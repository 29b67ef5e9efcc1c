"""Reading the files sppcaffe is given, with errors that name the file and
say what is wrong: missing, a directory where a file was expected,
unreadable, or binary where text was expected."""
import json
import os
import zipfile
import zlib

import numpy as np

NO_SUCH_FILE = "no such file"
IS_A_DIRECTORY = "it is a directory, not a file"


def path_problem(path):
    """Why `path` cannot be read as a file ("no such file", "it is a
    directory, not a file"), or None when it is a file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return None
    return IS_A_DIRECTORY if os.path.isdir(path) else NO_SUCH_FILE


def check_file(path, what):
    """FileNotFoundError or IsADirectoryError, naming the file and `what` it
    was to be read as, unless `path` is a file."""
    problem = path_problem(path)
    if problem:
        kind = IsADirectoryError if problem == IS_A_DIRECTORY else FileNotFoundError
        raise kind(f"cannot read {what} '{os.fspath(path)}': {problem}")


def read_bytes(path, what):
    """The content of file `path`.  An OSError of the same kind otherwise,
    whose message names the file and `what` it was to be read as."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise IsADirectoryError(f"cannot read {what} '{path}': {IS_A_DIRECTORY}") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read {what} '{path}': {NO_SUCH_FILE}") from None
    except OSError as err:
        raise type(err)(f"cannot read {what} '{path}': {err.strerror or err}") from None
    except ValueError:              # open() refuses a name with a NUL byte: no file has one
        raise FileNotFoundError(f"cannot read {what} {path!r}: {NO_SUCH_FILE}") from None


def decode_text(raw, path, what, error):
    """`raw` bytes of file `path` as UTF-8 text; where they are not (a
    binary file given for a text one), `error` naming the file, the line
    and the first offending byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise error(f"{path}:{line}: not a text {what}: byte 0x{raw[err.start]:02x} at offset "
                    f"{err.start} is not UTF-8 (a binary file?)") from None


def read_text_file(path, what, error):
    """read_bytes and decode_text in one: the UTF-8 text of file `path`."""
    return decode_text(read_bytes(path, what), os.fspath(path), what, error)


def read_json_file(path, what, error):
    """The parsed content of JSON file `path`; `error` naming the file when
    it is not UTF-8 JSON (e.g. truncated or overwritten)."""
    text = read_text_file(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{os.fspath(path)}: not a valid {what}: {err}") from None
    except RecursionError:
        raise error(f"{os.fspath(path)}: not a valid {what}: nested too deeply") from None


# What np.load raises for a file that is not a whole .npy/.npz (empty, truncated, a pickle).
NUMPY_FILE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def load_numpy(path, what, error):
    """np.load of file `path` (a .npy array, or an .npz archive whose
    arrays load when read; no pickles); `error` naming the file when it is
    not one (an .npz member that is corrupt raises one of
    NUMPY_FILE_ERRORS when it is read)."""
    check_file(path, what)
    try:
        return np.load(os.fspath(path), allow_pickle=False)
    except NUMPY_FILE_ERRORS as err:
        raise error(f"{os.fspath(path)}: not a readable .npy/.npz {what} ({err})") from None


def read_npz(path, what, error):
    """Every array of .npz archive `path`, read now: {name: array};
    `error` naming the file when it is not a whole .npz archive."""
    loaded = load_numpy(path, what, error)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise error(f"{os.fspath(path)}: a single .npy array, not the .npz archive of a {what}")
    try:
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except NUMPY_FILE_ERRORS as err:
        raise error(f"{os.fspath(path)}: not a readable .npz {what} ({err})") from None
