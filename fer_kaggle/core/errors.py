"""The errors worded for the user, and the machine's faults told in one line.

FerKaggleError: a user's mistake or a problem in the run folder. DamagedFile: one of the run's own files
that does not read back as written (a crash of the disk, a careless hand). The CLI catches both once,
prints the message on one line and exits with status 2. A machine fault (a full disk, a read-only folder,
a permission denied) is an OSError: `machine_fault` words it, with the folder and its free space, and the
CLI exits with status 1. Anything else is a bug and keeps its traceback, so it can be reported.
"""
import errno
import shutil
from pathlib import Path


class FerKaggleError(ValueError):
    """A problem with the user's input or run folder, worded for the user."""


class DamagedFile(FerKaggleError):
    """A file the run wrote that does not read back: truncated, emptied, garbage, or the wrong content."""

    def __init__(self, path, problem, remedy=""):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} is damaged ({problem})" + (f"; {remedy}" if remedy else ""))


# errno values that are the machine's doing, not a bug: the disk, its permissions, its hardware
MACHINE_FAULTS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the folder is on a read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.EIO: "the disk reported an input/output error"}


def _free_space(path):
    """(the nearest existing folder of `path`, its free bytes), or (None, None)."""
    for folder in [Path(path), *Path(path).parents]:
        try:
            if folder.is_dir():
                return folder, shutil.disk_usage(folder).free
        except OSError:
            continue
    return None, None


def gigabytes(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def machine_fault(exc, needed=None):
    """One line for an OSError the machine caused (naming the file, its folder's free space and what is
    needed), or None for any other error (a bug: it keeps its traceback)."""
    if not isinstance(exc, OSError) or exc.errno not in MACHINE_FAULTS:
        return None
    name = exc.filename or "a file"
    shown = Path(str(name).split(".tmp-")[0]) if exc.filename else None  # atomic writes: the target's name
    folder, free = _free_space(shown.parent if shown else Path.cwd())
    where = f" ({gigabytes(free)} free in {folder})" if folder is not None else ""
    need = f"; the run writes about {gigabytes(needed)} in all" if needed else ""
    what = {errno.ENOSPC: "free some space or give --workdir on another disk",
            errno.EDQUOT: "free some space or give --workdir on another disk",
            errno.EROFS: "give --workdir (or --out) a folder you can write"}.get(
        exc.errno, "give it write permission or choose another folder")
    return (f"{MACHINE_FAULTS[exc.errno]} writing {shown or name}{where}{need}: {what}, then run the same "
            f"command again (everything finished is kept)")


class TimeLimitReached(Exception):
    """--time-limit ran out after a finished epoch: everything is saved, a re-run resumes."""
