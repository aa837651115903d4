"""One builder at a time per cache folder: ``build_lock(final)`` flocks ``cache.dir`` itself for the whole build.

A second builder (another job, a second terminal) waits for the first and says who holds the lock (the pid,
from /proc/locks), instead of both decoding into one ``.partial`` folder. The kernel drops the lock when its
holder dies, so a killed build never leaves a stale lock, and no lock file sits among the caches. Builds of
other caches in the same ``cache.dir`` wait too: the builder is IO-bound, so running them one after another
costs little.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)


@contextlib.contextmanager
def build_lock(final: Path) -> Iterator[None]:
    folder = Path(final).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for the build lock on %s: another cache build holds it (%s); this one continues "
                        "when it ends", folder, holder(folder) or "holder unknown")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def holder(folder: Path) -> Optional[str]:
    """'pid N: <command line>' of the process holding a flock on ``folder`` (Linux /proc/locks), or None."""
    try:
        st = os.stat(folder)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode and parts[4] != str(os.getpid()):
            pid = parts[4]
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            return f"pid {pid}" + (f": {cmd[:200]}" if cmd else "")
    return None
