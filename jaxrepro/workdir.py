"""Guards of a run directory: one writer at a time, and records that read as one run."""
import fcntl
import json
import os


class WorkdirLock:
    """Exclusive lock on `<workdir>/.lock` naming its holder's PID; released when the process ends."""

    def __init__(self, workdir):
        self.path = os.path.join(os.path.abspath(workdir), ".lock")
        self._file = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RuntimeError(f"{os.path.dirname(self.path)} is being written by another process (PID {holder}); "
                               f"wait for it to finish or use another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def trim_records(path, last_step):
    """Drop JSON-lines records with step > last_step (atomically), so a resumed run's log reads as one run."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return len(lines) - len(keep)
