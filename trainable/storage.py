"""Files under a storage path that is a local folder or an s3:// / gs:// URI, through pyarrow's filesystems.

One place resolves a storage path to a filesystem, so the search's experiment folder and the
SSL-prefix store (which every node of a cluster must see) agree on where things are.
"""
from __future__ import annotations

import os
import uuid

import pyarrow.fs


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
        self.fs.create_dir(self.root, recursive=True)
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
