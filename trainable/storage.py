"""Files under a storage path that is a local folder or an s3:// / gs:// URI, through pyarrow's filesystems.

One place resolves a storage path to a filesystem, so the search's experiment folder and the
SSL-prefix store (which every node of a cluster must see) agree on where things are.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

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

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create a file only if it does not exist; False if it does. Atomic on local filesystems; on object
        stores (no such primitive) a check then a write, which a caller confirms by reading back."""
        self.fs.create_dir(self.root, recursive=True)
        if isinstance(self.fs, pyarrow.fs.LocalFileSystem):
            try:
                fd = os.open(self.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.exists(name):
            return False
        self.write_bytes(name, data)
        return True


class LockHeld(Exception):
    """Another live driver runs this experiment."""


class DriverLock:
    """One driver per experiment: a lock file under its folder that the driver refreshes while it lives.

    A lock is stale, and taken over, when its heartbeat is older than STALE_S, or when it was taken on
    this host by a process that no longer exists: a driver killed with SIGKILL holds it no longer
    than that.
    """

    NAME = "driver.lock"
    HEARTBEAT_S = 20.0
    STALE_S = 90.0

    def __init__(self, folder: Folder):
        self.folder = folder
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": time.time()}).encode()

    def holder(self) -> dict | None:
        try:
            return json.loads(self.folder.read_text(self.NAME))
        except (FileNotFoundError, ValueError):
            return None

    @classmethod
    def is_stale(cls, holder: dict) -> bool:
        if time.time() - holder.get("heartbeat", 0) > cls.STALE_S:
            return True
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False  # alive, another user's
        return False

    def acquire(self) -> "DriverLock":
        if not self.folder.create_exclusive(self.NAME, self._record()):
            holder = self.holder()
            if holder is not None and not self.is_stale(holder):
                raise LockHeld(_describe(holder))
            log.warning("taking over the lock of a driver that is gone (%s)", _describe(holder or {}))
            self.folder.write_bytes(self.NAME, self._record())
        time.sleep(0.05)
        holder = self.holder()
        if holder is None or holder.get("token") != self.token:  # another driver won a takeover race
            raise LockHeld(_describe(holder or {}))
        self._thread = threading.Thread(target=self._beat, name="driver-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                self.folder.write_bytes(self.NAME, self._record())
            except OSError as e:  # a storage hiccup: the next beat tries again
                log.warning("could not refresh the driver lock: %s", e)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            self.folder.delete(self.NAME)

    def __enter__(self) -> "DriverLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
