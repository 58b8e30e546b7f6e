"""Files under a storage path that is a local folder or an s3:// / gs:// URI, through pyarrow's filesystems.

One place resolves a storage path to a filesystem, so the search's experiment folder and the
SSL-prefix store (which every node of a cluster must see) agree on where things are.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

import pyarrow.fs

log = logging.getLogger(__name__)


def is_remote(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute (trial processes run in other folders); a URI unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


def resolve(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path on it) of a local path or a URI."""
    if is_remote(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(path)


class Folder:
    """A folder of small files (settings, run ids, tables) on any filesystem."""

    def __init__(self, path: str):
        self.uri = absolute(path).rstrip("/")
        self.fs, self.root = resolve(self.uri)

    def path(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self.path(name)).type != pyarrow.fs.FileType.NotFound

    def write_text(self, name: str, text: str) -> None:
        """Written whole or not at all: to a temporary name, then renamed (a copy on object stores,
        whose uploads are atomic anyway)."""
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Written whole or not at all, like `write_text`; `name` may name a sub-folder ("a/b.csv")."""
        self.fs.create_dir(self.path(name).rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pyarrow.fs.LocalFileSystem):
            write_durably(self.path(name), data)
            return
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(data)

    def read_text(self, name: str) -> str:
        """Raises FileNotFoundError when the file is not there."""
        try:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read().decode()
        except FileNotFoundError:
            raise
        except OSError as e:  # pyarrow reports a missing object as a plain OSError on some filesystems
            if not self.exists(name):
                raise FileNotFoundError(self.path(name)) from e
            raise

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self.path(name))
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        """The names of the folder's entries (files and folders); [] when it does not exist."""
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def delete_entry(self, name: str) -> None:
        """A file or a whole folder."""
        info = self.fs.get_file_info(self.path(name))
        if info.type == pyarrow.fs.FileType.Directory:
            self.fs.delete_dir(self.path(name))
        elif info.type == pyarrow.fs.FileType.File:
            self.fs.delete_file(self.path(name))

    def child(self, name: str) -> "Folder":
        """The sub-folder `name`, on the same filesystem (and of the same class)."""
        sub = object.__new__(type(self))
        sub.__dict__.update(self.__dict__)
        sub.uri, sub.root = f"{self.uri}/{name}", self.path(name)
        return sub

    @property
    def atomic_create(self) -> bool:
        """Whether `create_exclusive` is atomic: on local (and NFS) file systems, not on object stores."""
        return isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create a file, whole, only if it does not exist; False if it does. Atomic where `atomic_create`:
        written under a temporary name, then hard-linked to `name` (link fails if `name` exists, also on NFS),
        so a reader never sees it half written. On object stores (no such primitive through pyarrow) a check
        then a write, which a caller confirms by reading back."""
        self.fs.create_dir(self.root, recursive=True)
        if not self.atomic_create:
            if self.exists(name):
                return False
            self.write_bytes(name, data)
            return True
        tmp = self.path(f".tmp-{uuid.uuid4().hex}")
        write_durably(tmp, data)
        try:
            os.link(tmp, self.path(name))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)


class LockHeld(Exception):
    """Another live driver runs this experiment."""


@functools.cache
def machine_identity() -> str:
    """What tells this machine apart from another with the same hostname, as far as process ids go: the
    machine id, the kernel's boot id and the pid namespace (a pid means one process only under all three);
    where Linux's files are missing, the network card's address."""
    parts = []
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            with open(path) as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("")
    if not any(parts):
        parts.append(f"{uuid.getnode():x}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class DriverLock:
    """One driver per experiment: a lock under its folder that the driver refreshes while it lives.

    The lock is the folder `driver.lock/` of generation files `0`, `1`, ...: the holder is the record in the
    highest. A lock is free when released, or stale: its heartbeat older than STALE_S, or taken on this
    machine (hostname *and* `machine_identity()`) by a process that no longer exists. A driver takes a free
    lock by creating the next generation with `Folder.create_exclusive`, which exactly one of several racing
    drivers wins; the generation is its fencing token. The holder rewrites only its own file (its heartbeat,
    every HEARTBEAT_S), after checking that its generation is still the highest and holds its token.

    When the check fails, a successor took the lock (this driver was paused or cut off from the storage for
    longer than STALE_S): `lost` is set, `on_lost(lock)` called from the heartbeat thread, and the heartbeat
    stops. The driver must then stop at once and write nothing more to the experiment: it runs beside its
    successor (`exit_on_lost` ends the process as a SIGKILL would, which a resume is built for).

    Limit: on object stores (s3://, gs://) pyarrow offers no atomic create. There a takeover is a check then a
    write, confirmed by reading back after SETTLE_S: two drivers starting within about that time of each
    other may both start; the one whose record was overwritten finds out at its first heartbeat.
    """

    NAME = "driver.lock"
    HEARTBEAT_S = 20.0
    STALE_S = 90.0
    SETTLE_S = 2.0  # object stores: the wait before reading a takeover back

    def __init__(self, folder: Folder, on_lost: Callable[["DriverLock"], None] | None = None):
        self.folder, self.dir, self.on_lost = folder, folder.child(self.NAME), on_lost
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, released: bool = False) -> bytes:
        return json.dumps({"token": self.token, "generation": self.generation, "host": socket.gethostname(),
                           "machine": machine_identity(), "pid": os.getpid(), "heartbeat": time.time(),
                           "released": released}).encode()

    def _current(self) -> tuple[int | None, dict | None]:
        """(highest generation, its record); (None, None) when there is none."""
        generations = [int(n) for n in self.dir.names() if n.isdigit()]
        if not generations:
            return None, None
        top = max(generations)
        try:
            return top, json.loads(self.dir.read_text(str(top)))
        except (FileNotFoundError, ValueError):  # torn, or being written elsewhere: held until it is as old as
            mtime = self.dir.fs.get_file_info(self.dir.path(str(top))).mtime  # a stale heartbeat
            return top, {"heartbeat": mtime.timestamp() if mtime else 0.0, "host": "?", "pid": "?"}

    def holder(self) -> dict | None:
        """The record of the driver holding the lock; None when it is free of any (never taken, released)."""
        _, record = self._current()
        return None if record is None or record.get("released") else record

    @classmethod
    def is_stale(cls, holder: dict) -> bool:
        if holder.get("released") or time.time() - holder.get("heartbeat", 0) > cls.STALE_S:
            return True
        if holder.get("host") == socket.gethostname() and holder.get("machine") == machine_identity():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False  # alive, another user's
        return False

    def held(self) -> bool:
        """Whether this driver's generation is still the highest and holds its token."""
        generation, record = self._current()
        return generation == self.generation and record is not None and record.get("token") == self.token

    def acquire(self) -> "DriverLock":
        """Take the lock, or raise LockHeld naming its live holder; starts the heartbeat."""
        self._clear_legacy_file()
        for _ in range(3):  # a failed create: another driver won that generation; look again
            generation, record = self._current()
            if record is not None and not self.is_stale(record):
                raise LockHeld(_describe(record))
            if record is not None and not record.get("released"):
                log.warning("taking over the lock of a driver that is gone (%s)", _describe(record))
            self.generation = 0 if generation is None else generation + 1
            if self.dir.create_exclusive(str(self.generation), self._record()) and self._confirmed():
                break
        else:
            raise LockHeld(_describe(self.holder() or {}))
        self._drop_older()
        self._thread = threading.Thread(target=self._beat, name="driver-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _confirmed(self) -> bool:
        if self.dir.atomic_create:
            return True
        time.sleep(self.SETTLE_S)  # a racer's write of the same generation may land after ours
        return self.held()

    def _drop_older(self) -> None:
        for name in self.dir.names():
            if name.isdigit() and int(name) < self.generation:
                try:
                    self.dir.delete(name)
                except OSError as e:  # left for the next taker
                    log.info("could not remove the old lock generation %s: %s", name, e)

    def _clear_legacy_file(self) -> None:
        """A `driver.lock` file of an earlier version of this code: honoured while live, else removed."""
        if self.folder.fs.get_file_info(self.folder.path(self.NAME)).type != pyarrow.fs.FileType.File:
            return
        try:
            record = json.loads(self.folder.read_text(self.NAME))
        except (FileNotFoundError, ValueError):
            record = None
        if record is not None and not self.is_stale(record):
            raise LockHeld(_describe(record))
        self.folder.delete(self.NAME)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                if not self.held():
                    self._lose()
                    return
                self.dir.write_bytes(str(self.generation), self._record())
            except OSError as e:  # a storage hiccup: the next beat tries again
                log.warning("could not refresh the driver lock: %s", e)

    def _lose(self) -> None:
        log.error("another driver took over the lock of %s (%s): this driver must stop", self.folder.uri,
                  _describe(self.holder() or {}))
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(self)

    def release(self) -> None:
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            if self.generation is not None and self.held():
                self.dir.write_bytes(str(self.generation), self._record(released=True))
        except OSError as e:  # it lapses after STALE_S
            log.warning("could not release the driver lock: %s", e)

    def __enter__(self) -> "DriverLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


LOST_EXIT_CODE = 75  # EX_TEMPFAIL: the experiment goes on under another driver


def exit_on_lost(lock: DriverLock) -> None:
    """An `on_lost` for a driver: end the process at once, writing nothing more, as a SIGKILL would."""
    logging.shutdown()
    os._exit(LOST_EXIT_CODE)


def _describe(holder: dict) -> str:
    age = time.time() - holder.get("heartbeat", 0)
    return f"pid {holder.get('pid')} on {holder.get('host')}, last seen {age:.0f} s ago"


def write_durably(path: str, data: bytes) -> None:
    """A local file written to a temporary name, flushed to disk, then renamed over `path`.

    A crash leaves the old file or the new one, never a truncated one: without the fsync a
    power loss can persist the rename before the data.
    """
    tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself
    finally:
        os.close(dir_fd)
