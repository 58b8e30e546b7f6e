"""trainable.storage: one resolution of storage paths, small files written whole, one driver per experiment."""
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from concurrency_workers import QuickLock, hold_until_lost, race_takeovers
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


def test_folder__create_exclusive_creates_once_whole_and_leaves_no_temporary_file(tmp_path):
    sub = storage.Folder(str(tmp_path)).child("d")
    assert sub.uri == f"{tmp_path}/d" and sub.atomic_create
    assert sub.create_exclusive("x", b"first") and not sub.create_exclusive("x", b"second")
    assert sub.read_text("x") == "first" and sub.names() == ["x"]


def test_resolve__local_paths_and_uris():
    fs, root = storage.resolve("/x/y")
    assert type(fs).__name__ == "LocalFileSystem" and root == "/x/y"
    assert storage.absolute("s3://bucket/p") == "s3://bucket/p" and storage.is_remote("gs://b")
    fs, root = storage.resolve("file:///tmp/z")
    assert root == "/tmp/z"


def _lock_file(folder, generation=0, **holder):
    """A lock record as another driver on this machine would have written it."""
    record = {"token": "other", "host": socket.gethostname(), "machine": storage.machine_identity(),
              "pid": os.getpid(), "heartbeat": time.time(), **holder}
    folder.child(storage.DriverLock.NAME).write_text(str(generation), json.dumps(record))


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def test_driver_lock__one_holder_at_a_time_and_released_on_exit(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    with storage.DriverLock(folder) as lock:
        with pytest.raises(storage.LockHeld, match=f"pid {os.getpid()}"):
            storage.DriverLock(folder).acquire()
        assert lock.holder()["token"] == lock.token and lock.held()
    assert lock.holder() is None and not lock.lost.is_set()
    storage.DriverLock(folder).acquire().release()  # free again


def test_driver_lock__each_taker_gets_a_higher_generation_and_older_ones_are_dropped(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    generations = []
    for _ in range(3):
        with storage.DriverLock(folder) as lock:
            generations.append(lock.generation)
            assert folder.child(storage.DriverLock.NAME).names() == [str(lock.generation)]
    assert generations == [0, 1, 2]


def test_driver_lock__a_dead_driver_does_not_hold_it(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    _lock_file(folder, pid=_dead_pid())  # killed on this machine: its pid is gone
    storage.DriverLock(folder).acquire().release()
    _lock_file(folder, 5, host="another-host", pid=1, heartbeat=time.time() - 10 * storage.DriverLock.STALE_S)
    storage.DriverLock(folder).acquire().release()  # elsewhere, silent for too long
    _lock_file(folder, 7, host="another-host", pid=1)
    with pytest.raises(storage.LockHeld, match="another-host"):  # elsewhere and beating: held
        storage.DriverLock(folder).acquire()


def test_driver_lock__same_hostname_on_another_machine_is_not_this_host(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    _lock_file(folder, pid=_dead_pid(), machine="another-machine")  # that pid means nothing here
    with pytest.raises(storage.LockHeld, match=socket.gethostname()):
        storage.DriverLock(folder).acquire()


def test_driver_lock__an_unreadable_record_holds_it_until_it_is_as_old_as_a_stale_heartbeat(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    folder.child(storage.DriverLock.NAME).write_text("0", '{"token": "half')  # torn, or still being written
    with pytest.raises(storage.LockHeld):
        storage.DriverLock(folder).acquire()
    old = time.time() - 2 * storage.DriverLock.STALE_S
    os.utime(tmp_path / "exp" / storage.DriverLock.NAME / "0", (old, old))
    storage.DriverLock(folder).acquire().release()


def test_driver_lock__an_earlier_versions_lock_file_is_honoured_while_live_and_replaced_when_stale(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    legacy = {"token": "old", "host": "another-host", "pid": 1, "heartbeat": time.time()}
    folder.write_text(storage.DriverLock.NAME, json.dumps(legacy))
    with pytest.raises(storage.LockHeld, match="another-host"):
        storage.DriverLock(folder).acquire()
    folder.write_text(storage.DriverLock.NAME, json.dumps({**legacy, "heartbeat": 0}))
    with storage.DriverLock(folder) as lock:
        assert lock.held() and lock.holder()["token"] == lock.token


def test_driver_lock__a_holder_whose_record_another_driver_overwrote_stops_at_its_next_beat(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    lock = QuickLock(folder).acquire()
    try:
        # as when two drivers wrote the same generation on an object store, where the other's write landed last
        _lock_file(folder, lock.generation, token="racer")
        assert lock.lost.wait(timeout=60) and lock.holder()["token"] == "racer"
    finally:
        lock.release()
    assert lock.holder()["token"] == "racer"  # a driver that lost the lock leaves it to the winner


def test_driver_lock__a_live_holder_s_heartbeat_keeps_it_held_long_past_the_stale_time(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    with QuickLock(folder) as lock:
        time.sleep(6 * QuickLock.STALE_S)
        assert time.time() - lock.holder()["heartbeat"] < QuickLock.STALE_S  # refreshed all along
        with pytest.raises(storage.LockHeld):
            QuickLock(folder).acquire()


HOLD = """
import sys, time
from concurrency_workers import QuickLock
from trainable import storage
lock = QuickLock(storage.Folder(sys.argv[1]), on_lost=storage.exit_on_lost).acquire()
print(lock.generation, flush=True)
time.sleep(120)
"""


def test_driver_lock__a_driver_that_lost_its_lock_exits_at_once_with_code_75(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", HOLD, folder.uri], stdout=subprocess.PIPE, text=True, env=env)
    try:
        generation = int(driver.stdout.readline())
        _lock_file(folder, generation, token="racer")  # another driver's write of its generation landed last
        assert driver.wait(timeout=60) == storage.LOST_EXIT_CODE == 75
    finally:
        driver.kill()
    assert QuickLock(folder).holder()["token"] == "racer"  # it wrote nothing more


ROUNDS, RACERS = 24, 3


@pytest.mark.slow  # several processes, ~20 s
def test_driver_lock__racing_takeovers_of_a_stale_lock_have_exactly_one_winner(tmp_path):
    """With 0-200 ms of latency on every write and create, racers that all found the lock stale start
    together, ROUNDS times; each round exactly one wins (before: two won in about 4 rounds of 10)."""
    class Silent(QuickLock):
        HEARTBEAT_S = 3600.0  # a holder that stopped beating (a driver that hangs, or one on another machine)

    roots = [str(tmp_path / f"round{i}") for i in range(ROUNDS)]
    stale = [Silent(storage.Folder(r)).acquire() for r in roots]
    while not all(QuickLock.is_stale(lock.holder()) for lock in stale):
        time.sleep(0.05)
    ctx = mp.get_context("spawn")
    barrier, outcomes = ctx.Barrier(RACERS), ctx.Queue()
    racers = [ctx.Process(target=race_takeovers, args=(roots, barrier, outcomes, seed)) for seed in range(RACERS)]
    try:
        for p in racers:
            p.start()
        results = [outcomes.get(timeout=300) for _ in range(ROUNDS * RACERS)]
    finally:
        for p in racers:
            p.join(timeout=60)
            p.kill()
        for lock in stale:
            lock.release()
    winners = [sum(won for i, won in results if i == r) for r in range(ROUNDS)]
    assert winners == [1] * ROUNDS, f"winners per round: {winners}"


def test_driver_lock__a_driver_paused_past_the_stale_time_finds_on_resuming_that_it_lost_the_lock(tmp_path):
    folder = storage.Folder(str(tmp_path / "exp"))
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    holder = ctx.Process(target=hold_until_lost, args=(folder.uri, events))
    holder.start()
    successor = None
    try:
        assert events.get(timeout=120) == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # paused (a stopped VM, a debugger, swapping): alive, not beating
        while successor is None:
            try:
                successor = QuickLock(folder).acquire()
            except storage.LockHeld:
                time.sleep(0.05)  # until its heartbeat is older than STALE_S
        os.kill(holder.pid, signal.SIGCONT)
        assert events.get(timeout=120) == ("lost", True, True)  # lost set, on_lost called
        assert successor.held() and not successor.lost.is_set()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.join(timeout=60)
        holder.kill()
        if successor is not None:
            successor.release()
