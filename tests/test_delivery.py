"""The delivery queue on its own: a fake receiver that fails on cue, no MLflow, no Ray (seconds in all)."""
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from trainable import storage
from tuning import delivery
from tuning.delivery import Delivery, OpTypes
from tuning.journal import Journal

TYPES = OpTypes()


@TYPES.add
@dataclass(frozen=True)
class Note:
    text: str


class AuthError(Exception):
    """Stands for a 401/403: the receiver refuses our credentials (an expired token), not this operation."""


def is_outage(error: BaseException) -> bool:
    return isinstance(error, (ConnectionError, AuthError))


class Receiver:
    """Takes notes in order, or fails on cue: `down` (an exception raised for every note while set), `refuse`
    (notes that fail on their own), `hang_after` (once it has this many, the next try hangs until `gate`)."""

    def __init__(self):
        self.got: list[str] = []
        self.tries: Counter = Counter()
        self.down: Exception | None = None
        self.refuse: set[str] = set()
        self.hang_after: int | None = None
        self.gate = threading.Event()

    def __call__(self, op: Note) -> None:
        self.tries[op.text] += 1
        if self.hang_after is not None and len(self.got) >= self.hang_after:
            self.gate.wait(10)
            raise ConnectionError("the driver was killed meanwhile")
        if self.down is not None:
            raise self.down
        if op.text in self.refuse:
            raise FileNotFoundError(f"/checkpoints/{op.text} moved")
        self.got.append(op.text)


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(delivery, "RETRY_S", 0.01)
    monkeypatch.setattr(delivery, "DOWN_WAIT_S", 0.5)
    monkeypatch.setattr(delivery, "JOIN_S", 1.0)


def queue(receiver: Receiver, folder: storage.Folder | None = None) -> Delivery:
    q = Delivery(receiver, is_outage, TYPES, name="the fake")
    if folder is not None:
        q.load(folder)
    return q


def backlog(folder: storage.Folder, n: int, error: Exception | None = None) -> tuple[Receiver, Delivery]:
    """A queue whose receiver is down (`error`, else a refused connection) with `n` notes put."""
    receiver = Receiver()
    receiver.down = error or ConnectionError("connection refused")
    q = queue(receiver, folder)
    for text in notes(n):
        q.put(Note(text))
    return receiver, q


def notes(n: int, prefix: str = "n") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def journal_lines(folder: storage.Folder, name: str = "pending") -> list[dict]:
    return [record for record, _ in Journal(storage.Folder(f"{folder.uri}/{name}")).read()]


def test_delivery__operations_arrive_in_the_order_they_were_put(tmp_path):
    receiver = Receiver()
    q = queue(receiver, storage.Folder(str(tmp_path)))
    for text in notes(200):
        q.put(Note(text))
    assert q.finish(timeout=30) == 0
    assert receiver.got == notes(200)
    assert not (tmp_path / "pending").exists()  # nothing waited: no journal at all


def test_delivery__an_outage_keeps_every_operation_and_ends_in_order(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tuning.delivery"):
        receiver, q = backlog(storage.Folder(str(tmp_path)), 30)
        wait_until(lambda: receiver.tries["n0"] >= 3)
        receiver.down = None
        assert q.finish(timeout=30) == 0
    assert receiver.got == notes(30)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "does not answer" in m]) == 1  # one warning per outage, not per try
    assert len([m for m in messages if "answers again" in m]) == 1


def test_delivery__an_operation_that_fails_on_its_own_is_set_aside_and_the_next_goes_on(tmp_path, caplog):
    """Issue 21, reproduction 6: a missing checkpoint jammed every later call, and every --resume."""
    receiver = Receiver()
    receiver.refuse = {"best-model"}
    folder = storage.Folder(str(tmp_path))
    q = queue(receiver, folder)
    with caplog.at_level(logging.WARNING, logger="tuning.delivery"):
        for text in ("a", "best-model", "b"):
            q.put(Note(text))
        assert q.finish(timeout=30) == 0
    assert receiver.got == ["a", "b"] and receiver.tries["best-model"] == 1
    assert q.set_aside == 1
    [dead] = journal_lines(folder, "dead_letters")
    assert dead["op"] == {"type": "Note", "text": "best-model"} and dead["retried"] == 0
    assert "FileNotFoundError" in dead["error"] and "moved" in dead["error"]
    assert any("refused Note" in r.getMessage() and "dead_letters" in r.getMessage() for r in caplog.records)


def test_delivery__an_auth_error_is_an_outage_and_drops_nothing(tmp_path):
    """Issue 21, reproduction 7: a 401/403 (an expired token, a gateway) dropped every call made meanwhile."""
    folder = storage.Folder(str(tmp_path))
    receiver, q = backlog(folder, 5, AuthError("403 Forbidden"))
    wait_until(lambda: receiver.tries["n0"] >= 3)
    assert receiver.got == [] and q.set_aside == 0 and q.waiting == 5
    receiver.down = None
    assert q.finish(timeout=30) == 0
    assert receiver.got == notes(5) and not journal_lines(folder, "dead_letters")


@pytest.mark.parametrize("bound", ["calls", "bytes"])
def test_delivery__memory_is_bounded_and_spilled_operations_come_back_in_order(tmp_path, monkeypatch, bound):
    """Issue 21, reproduction 9: 20,000 queued metric calls took 48 MiB, with no bound."""
    monkeypatch.setattr(delivery, "SPILL_CALLS", 3)
    if bound == "calls":
        monkeypatch.setattr(delivery, "MEMORY_CALLS", 5)
    else:
        monkeypatch.setattr(delivery, "MEMORY_BYTES", 5 * 120)  # each note's record is about 110 bytes
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver, storage.Folder(str(tmp_path)))
    texts = [t + "x" * 60 for t in notes(100)]
    most = 0
    for text in texts:
        q.put(Note(text))
        most = max(most, q.in_memory)
    assert most <= 5 + 3 and q.waiting == 100
    receiver.down = None
    assert q.finish(timeout=30) == 0
    assert receiver.got == texts
    assert not (tmp_path / "pending").exists()  # all delivered: the journal is gone


def test_delivery__a_long_journal_left_by_an_earlier_driver_is_read_back_a_bounded_part_at_a_time(tmp_path,
                                                                                                   monkeypatch):
    folder = storage.Folder(str(tmp_path))
    _, q = backlog(folder, 100)
    assert q.finish(timeout=30) == 100
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 5)
    receiver, most = Receiver(), []
    q = Delivery(lambda op: (most.append(q.in_memory), receiver(op)), is_outage, TYPES)
    q.load(folder)
    assert q.finish(timeout=30) == 0
    assert receiver.got == notes(100) and max(most) <= 5


def test_delivery__the_journal_is_appended_to_never_rewritten(tmp_path, monkeypatch):
    """Issue 21, reproduction 9: the pending file was rewritten whole every 10 s (18 MiB, an upload on S3)."""
    monkeypatch.setattr(delivery, "PERSIST_EVERY_S", 3600)
    receiver, q = backlog(storage.Folder(str(tmp_path)), 10)
    q.persist()
    [segment] = list((tmp_path / "pending").iterdir())
    before, inode = segment.read_bytes(), segment.stat().st_ino
    for text in notes(10, "m"):
        q.put(Note(text))
    q.persist()
    after = segment.read_bytes()
    assert segment.stat().st_ino == inode and after.startswith(before) and len(after) > len(before)
    q.persist()  # nothing new: nothing written
    assert segment.read_bytes() == after
    seqs = [r["seq"] for r in journal_lines(storage.Folder(str(tmp_path))) if "seq" in r]
    assert seqs == list(range(1, 21))  # each operation once
    receiver.down = None
    assert q.finish(timeout=30) == 0


def test_journal__on_a_store_that_cannot_append_each_append_is_a_new_segment(tmp_path):
    journal = Journal(storage.Folder(str(tmp_path / "j")), appendable=False)
    journal.append([json.dumps({"seq": 1})])
    first = (tmp_path / "j" / "000000.jsonl").read_bytes()
    at = journal.append([json.dumps({"seq": 2}), json.dumps({"seq": 3})])
    assert (tmp_path / "j" / "000000.jsonl").read_bytes() == first
    assert sorted(os.listdir(tmp_path / "j")) == ["000000.jsonl", "000001.jsonl"]
    assert [r["seq"] for r, _ in journal.read()] == [1, 2, 3]
    assert [r["seq"] for r, _ in journal.read(at)] == [2, 3]
    assert journal.replace(json.dumps({"seq": s}) for s in (3,)) == 1  # compaction: one base segment
    assert os.listdir(tmp_path / "j") == ["000002.base.jsonl"]
    assert [r["seq"] for r, _ in Journal(storage.Folder(str(tmp_path / "j"))).read()] == [3]


def test_delivery__a_driver_killed_mid_drain_replays_only_what_it_had_not_delivered(tmp_path, monkeypatch):
    """Issue 21, reproduction 9: a kill during the drain replayed every call already delivered."""
    monkeypatch.setattr(delivery, "MARK_EVERY_S", 0.0)
    receiver, q = backlog(storage.Folder(str(tmp_path / "first")), 10)
    q.persist()  # the outage's backlog is in the journal
    receiver.down, receiver.hang_after = None, 4  # back, but the driver is killed during the 5th delivery
    wait_until(lambda: receiver.tries["n4"] == 1)
    assert receiver.got == notes(4)
    shutil.copytree(tmp_path / "first", tmp_path / "next")  # what the killed driver left on disk
    again = Receiver()
    assert queue(again, storage.Folder(str(tmp_path / "next"))).finish(timeout=30) == 0
    assert again.got == notes(10)[4:]
    receiver.gate.set()
    q.finish(timeout=1)


def test_delivery__set_aside_operations_are_retried_once_by_the_next_load(tmp_path):
    folder = storage.Folder(str(tmp_path))
    first = Receiver()
    first.refuse = {"x", "y"}
    q = queue(first, folder)
    for text in ("a", "x", "y", "b"):
        q.put(Note(text))
    assert q.finish(timeout=30) == 0 and q.set_aside == 2

    second = Receiver()  # the next driver: y's cause is gone, x's is not
    second.refuse = {"x"}
    q = queue(second, folder)
    q.put(Note("c"))
    assert q.finish(timeout=30) == 0
    assert second.got == ["y", "c"] and second.tries["x"] == 1  # in their order, before the new ones
    assert [r["op"]["text"] for r in journal_lines(folder, "dead_letters")] == ["x"]

    third = Receiver()  # x was retried once: it stays set aside, for a person to look at
    q = queue(third, folder)
    assert q.finish(timeout=30) == 0
    assert third.tries["x"] == 0
    [dead] = journal_lines(folder, "dead_letters")
    assert dead["op"]["text"] == "x" and dead["retried"] == 1 and "moved" in dead["error"]


def test_delivery__finish_with_the_receiver_down_returns_within_its_bound_and_keeps_the_rest(tmp_path):
    """Issue 21, reproduction 9: with MLflow down at the end, the summary waited 600 s."""
    folder = storage.Folder(str(tmp_path))
    receiver, q = backlog(folder, 5)
    wait_until(lambda: receiver.tries["n0"] >= 1)
    start = time.monotonic()
    assert q.finish(timeout=20) == 5  # (a real search: 600 s, for a backlog MLflow is taking)
    assert time.monotonic() - start < delivery.DOWN_WAIT_S + 2
    assert [r["op"]["text"] for r in journal_lines(folder) if "seq" in r] == notes(5)
    later = Receiver()
    assert queue(later, folder).finish(timeout=30) == 0 and later.got == notes(5)


def test_delivery__a_journal_record_of_an_unknown_type_is_set_aside(tmp_path):
    folder = storage.Folder(str(tmp_path))
    Journal(storage.Folder(f"{folder.uri}/pending")).append(
        [json.dumps({"seq": 1, "op": {"type": "Gone", "text": "?"}}), json.dumps({"seq": 2, "op": {"type": "Note",
                                                                                                  "text": "ok"}})])
    receiver = Receiver()
    q = queue(receiver, folder)
    assert q.finish(timeout=30) == 0 and receiver.got == ["ok"] and q.set_aside == 1


def test_op_types__only_registered_frozen_dataclasses_travel():
    @dataclass
    class Loose:
        text: str

    with pytest.raises(TypeError, match="frozen dataclass"):
        TYPES.add(Loose)
    with pytest.raises(TypeError, match="not a registered"):
        TYPES.to_json(Loose("x"))
    assert TYPES.from_json(TYPES.to_json(Note("x"))) == Note("x")
