"""Write files under a temporary name and rename them into place, so an
interrupted write never leaves a truncated snapshot, model or cache.

A write killed before its rename leaves its temporary file behind
(``<name>.<8 random characters>.tmp``, tempfile's naming);
`remove_stale_temps` deletes those of a run's outputs when the next run
starts, and `write_problem` says before a run starts whether its outputs
could be written at all."""
import contextlib
import logging
import os
import re
import shutil
import tempfile

_log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# tempfile.mkstemp's random part: 8 characters of this set.
_RANDOM_PART = "[a-z0-9_]{8}"


def _temp_prefix(path):
    return os.path.basename(path) + "."


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_problem(path):
    """Why a file cannot be written at `path` as atomic_write writes it (a
    temporary file in its folder, then a rename), or None when it can.
    Creates and removes a temporary file: this also sees read-only file
    systems and full disks, which permission bits do not show."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"its folder '{folder}' does not exist"
    if os.path.isdir(path):
        return "it is a directory"
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as err:
        return f"cannot create a file in '{folder}': {err.strerror or err}"
    os.close(fd)
    os.unlink(tmp)
    return None


def folder_problem(folder):
    """Why folder `folder` cannot be made (where missing) and written to,
    or None when it can: its nearest existing ancestor must be a folder
    that takes new files."""
    existing = os.path.abspath(os.fspath(folder))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"'{existing}' is not a directory"
    return write_problem(os.path.join(existing, ".write-check"))


def remove_stale_temps(folder, name_pattern, directories=False):
    """Delete the temporary files that killed atomic writes left in
    `folder` for files whose name matches the regular expression
    `name_pattern` (whole name); the paths removed.  `directories`: the
    outputs are directories written the same way (LMDB databases).  Only
    for outputs no other process is writing at the same time."""
    folder = os.fspath(folder)
    stale = re.compile(f"(?:{name_pattern}){re.escape('.')}{_RANDOM_PART}{re.escape(TEMP_SUFFIX)}")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        path = os.path.join(folder, name)
        if not stale.fullmatch(name) or not (os.path.isdir(path) if directories
                                             else os.path.isfile(path)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if directories:
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
            _log.info("Removed %s, left by an interrupted write", path)
    return removed
