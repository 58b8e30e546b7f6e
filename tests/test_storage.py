"""trainable.storage: one resolution of storage paths, small files written whole, one driver per experiment."""
import json
import os
import socket
import subprocess
import time

import pytest

from trainable import storage


def test_folder__writes_reads_and_reports_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = storage.Folder("results/exp")  # relative: made absolute, as trial processes run elsewhere
    assert folder.uri == f"{tmp_path}/results/exp" and not folder.exists()
    folder.write_text("a.json", "{}")
    assert folder.exists() and folder.exists("a.json") and folder.read_text("a.json") == "{}"
    folder.write_text("a.json", "[1]")
    assert folder.read_text("a.json") == "[1]"
    with pytest.raises(FileNotFoundError):
        folder.read_text("b.json")
    folder.delete("a.json")
    folder.delete("a.json")  # deleting what is gone is no error
    assert not folder.exists("a.json")
    assert not [p for p in (tmp_path / "results" / "exp").iterdir() if p.name.startswith(".tmp")]


def test_resolve__local_paths_and_uris():
    fs, root = storage.resolve("/x/y")
    assert type(fs).__name__ == "LocalFileSystem" and root == "/x/y"
    assert storage.absolute("s3://bucket/p") == "s3://bucket/p" and storage.is_remote("gs://b")
    fs, root = storage.resolve("file:///tmp/z")
    assert root == "/tmp/z"


def _lock_file(folder, **holder):
    folder.write_text(storage.DriverLock.NAME, json.dumps({"token": "other", "host": socket.gethostname(),
                                                           "pid": os.getpid(), "heartbeat": time.time(),
                                                           **holder}))


def test_driver_lock__one_holder_at_a_time_and_released_on_exit(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    with storage.DriverLock(folder) as lock:
        assert folder.exists(storage.DriverLock.NAME)
        with pytest.raises(storage.LockHeld, match=f"pid {os.getpid()}"):
            storage.DriverLock(folder).acquire()
        assert lock.holder()["token"] == lock.token
    assert not folder.exists(storage.DriverLock.NAME)
    storage.DriverLock(folder).acquire().release()  # free again


def test_driver_lock__a_dead_driver_does_not_hold_it(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    _lock_file(folder, pid=dead.pid)  # killed on this host: its pid is gone
    storage.DriverLock(folder).acquire().release()
    _lock_file(folder, host="another-host", pid=1, heartbeat=time.time() - 10 * storage.DriverLock.STALE_S)
    storage.DriverLock(folder).acquire().release()  # elsewhere, silent for too long
    _lock_file(folder, host="another-host", pid=1)
    with pytest.raises(storage.LockHeld, match="another-host"):  # elsewhere and beating: held
        storage.DriverLock(folder).acquire()
