"""tuning.delivery and tuning.journal: the cases mutation testing (`make mutation MODULES=delivery`) found unchecked:
the messages a person reads, the byte counts the memory bound rests on and where a queue spills, the journal's
"delivered up to" marks and numbering, the retry pace and finish's bounds, the registry of operation types, and
the journal's segments and cursors (also on an object store)."""
import json
import logging
import re
import threading
import time
from dataclasses import dataclass

import pyarrow.fs
import pytest

from test_delivery import TYPES, Note, Receiver, is_outage, journal_lines, notes, queue, wait_until
from trainable import storage
from tuning import delivery
from tuning.delivery import Delivery, OpTypes
from tuning.journal import Journal


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(delivery, "RETRY_S", 0.01)
    monkeypatch.setattr(delivery, "DOWN_WAIT_S", 0.5)
    monkeypatch.setattr(delivery, "JOIN_S", 1.0)
    monkeypatch.setattr(delivery, "PERSIST_EVERY_S", 3600)  # journal writes only where a test makes them
    monkeypatch.setattr(delivery, "MARK_EVERY_S", 3600)


def said(caplog, logger="tuning.delivery", level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= level]


def hanging() -> Receiver:
    """A receiver whose first try hangs (until `gate`), then refuses the connection: the queue's thread is held in
    that try, so nothing but the test's own calls changes what the queue holds."""
    receiver = Receiver()
    receiver.hang_after = 0
    return receiver


def release(receiver: Receiver) -> None:
    receiver.hang_after = None
    receiver.gate.set()


def line_size(seq: int, text: str) -> int:
    """The length of an operation's record as `put` writes it."""
    return len(json.dumps({"seq": seq, "op": {"type": "Note", "text": text}}))


def delivery_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "delivery"}


# --- what a person reads ------------------------------------------------------------------------------------

def test_outage__one_warning_per_outage_naming_its_error_and_one_line_once_all_that_waited_is_delivered(caplog):
    receiver = Receiver()
    receiver.down = ConnectionError("connection refused\n  at host:5000")
    q = Delivery(receiver, is_outage, TYPES)  # no name given: "the receiver"
    with caplog.at_level(logging.INFO, logger="tuning.delivery"):
        for text in notes(7):
            q.put(Note(text))
        wait_until(lambda: receiver.tries["n0"] >= 3)
        receiver.down = None
        wait_until(lambda: len(said(caplog)) == 2)
        receiver.down = ConnectionError()  # a second outage; an error without a message
        q.put(Note("m"))
        wait_until(lambda: receiver.tries["m"] >= 2)
        receiver.down = None
        assert q.finish(timeout=30) == 0
    lines = said(caplog)
    assert receiver.got == [*notes(7), "m"] and len(lines) == 4
    assert lines[0] == ("the receiver does not answer (connection refused): its operations wait, in order, and are "
                        "retried every 0.01 s")
    back = re.fullmatch(r"the receiver answers again after (\d+) s: delivered the 7 operation\(s\) that waited",
                        lines[1])
    assert back and int(back.group(1)) < 600
    assert lines[2].startswith("the receiver does not answer (ConnectionError): its operations wait")
    assert re.fullmatch(r"the receiver answers again after \d+ s: delivered the 1 operation\(s\) that waited", lines[3])


def test_outage__the_line_once_it_answers_again_counts_what_waited_on_disk_too(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 2)
    monkeypatch.setattr(delivery, "SPILL_CALLS", 2)
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver, storage.Folder(str(tmp_path)))
    with caplog.at_level(logging.INFO, logger="tuning.delivery"):
        for text in notes(6):
            q.put(Note(text))
        assert q.in_memory == 2  # the other four wait in the journal
        receiver.down = None
        assert q.finish(timeout=30) == 0
    assert receiver.got == notes(6)
    assert re.fullmatch(r"the fake answers again after \d+ s: delivered the 6 operation\(s\) that waited",
                        said(caplog)[-1])


def test_set_aside__the_warning_names_the_operation_its_errors_first_300_characters_and_where_it_went(tmp_path,
                                                                                                        caplog):
    long = "y" * 400
    receiver = Receiver()
    receiver.refuse = {long, "x"}
    q = queue(receiver, storage.Folder(str(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="tuning.delivery"):
        for text in ("a", long, "b"):
            q.put(Note(text))
        assert q.finish(timeout=30) == 0
    error = f"FileNotFoundError: /checkpoints/{long} moved"
    assert said(caplog) == [f"the fake refused Note ({error[:300]}): set aside in {q.dead.folder.uri}; "
                            "the next operations go on"]
    assert [r["error"] for r in journal_lines(storage.Folder(str(tmp_path)), "dead_letters")] == [error]
    caplog.clear()
    bare = queue(receiver)  # a queue given no folder keeps nothing it sets aside, and says so
    with caplog.at_level(logging.WARNING, logger="tuning.delivery"):
        bare.put(Note("x"))
        assert bare.finish(timeout=30) == 0
    assert said(caplog) == ["the fake refused Note (FileNotFoundError: /checkpoints/x moved): lost (no folder); "
                            "the next operations go on"]


def test_no_folder__every_operation_waits_in_memory_past_the_bound_and_is_delivered_in_order(monkeypatch):
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 2)
    monkeypatch.setattr(delivery, "SPILL_CALLS", 2)
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver)
    assert (q.folder, q.pending, q.dead) == (None, None, None)
    for text in notes(6):
        q.put(Note(text))
    assert q.in_memory == q.waiting == 6  # nowhere else to wait
    receiver.down = None
    assert q.finish() == 0  # the default bound
    assert receiver.got == notes(6)


def test_load__says_what_an_earlier_driver_left_numbers_it_from_one_and_a_retried_operation_stays_retried(tmp_path,
                                                                                                          caplog):
    folder = storage.Folder(str(tmp_path))
    with pytest.raises(RuntimeError, match=r"^Delivery\.load\(\) comes before the first put\(\)$"):
        q = queue(Receiver())
        q.put(Note("early"))
        q.load(folder)
    q.finish(timeout=1)
    first = Receiver()
    first.refuse = {"x", "y"}
    q = queue(first, folder)
    for text in ("a", "x", "y"):
        q.put(Note(text))
    assert q.finish(timeout=30) == 0 and q.set_aside == 2

    second = Receiver()  # down the whole time: x and y (set aside once) and its own b wait in the journal
    second.down = ConnectionError("refused")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tuning.delivery"):
        q = queue(second, folder)
        q.put(Note("b"))
        assert q.finish(timeout=30) == 3
    assert said(caplog)[0] == ("the fake: 2 operation(s) an earlier driver did not deliver go first (2 of them set "
                               "aside then, retried once now)")
    records = [r for r in journal_lines(folder) if "seq" in r]
    assert [(r["seq"], r["op"]["text"], r.get("retry")) for r in records] == [(1, "x", 1), (2, "y", 1), (3, "b", None)]

    third = Receiver()  # compacted once more; x fails again: set aside as retried, never retried after; b fails
    third.refuse = {"x", "b"}  # for the first time: retried once by the next load
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tuning.delivery"):
        assert queue(third, folder).finish(timeout=30) == 0
    assert third.got == ["y"] and said(caplog)[0] == (
        "the fake: 3 operation(s) an earlier driver did not deliver go first (0 of them set aside then, retried once "
        "now)")
    fourth = Receiver()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tuning.delivery"):
        q = queue(fourth, folder)
        assert q.finish(timeout=30) == 0
    assert fourth.tries["x"] == 0 and fourth.got == ["b"]
    assert said(caplog)[0] == ("the fake: 1 operation(s) an earlier driver did not deliver go first (1 of them set "
                               "aside then, retried once now)")
    assert said(caplog, level=logging.WARNING) == [
        f"the fake: 1 operation(s) failed again when retried; they stay, with their errors, in {q.dead.folder.uri}"]


# --- memory: byte counts and where the queue spills ------------------------------------------------------------

def test_memory__the_byte_counts_always_equal_the_records_held(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 3)
    monkeypatch.setattr(delivery, "SPILL_CALLS", 2)
    checks = []

    def held_bytes_agree(q):
        with q._cond:
            return q._bytes == {"head": sum(len(line) for _, line in q._head),
                                "tail": sum(len(line) for _, line in q._tail)}

    receiver = Receiver()
    q = Delivery(lambda op: (checks.append(held_bytes_agree(q)), receiver(op)), is_outage, TYPES)
    q.load(storage.Folder(str(tmp_path)))
    with caplog.at_level(logging.ERROR, logger="tuning.delivery"):
        # a: the tail moves up into memory; b: the journal is read back, its last part with the tail in one go
        for phase, count in (("a", 4), ("b", 8)):
            receiver.down = ConnectionError("refused")
            for text in notes(count, phase):
                q.put(Note(text))
                checks.append(held_bytes_agree(q))
            receiver.down = None
            wait_until(lambda: receiver.got[-1:] == [f"{phase}{count - 1}"])
        assert q.finish(timeout=30) == 0
    assert receiver.got == notes(4, "a") + notes(8, "b")
    assert len(checks) > 20 and all(checks) and held_bytes_agree(q)
    assert said(caplog) == []  # nothing missing


@pytest.mark.parametrize("bound, sizes", [
    ("calls", [1, 2, 3, 4, 3, 4, 3, 4, 3]),  # SPILL_CALLS 2: the second operation in the tail spills it
    ("bytes", [1, 2, 3, 4, 3, 4, 3, 4, 3]),  # SPILL_BYTES of two records: the same
    ("bytes+1", [1, 2, 3, 4, 5, 3, 4, 5, 3]),  # a byte more: the third spills it
    ("head bytes", [1, 2, 3, 4, 3, 4, 3, 4, 3]),  # MEMORY_BYTES of three records holds three, not two
])
def test_memory__the_head_holds_exactly_its_bound_and_the_tail_spills_exactly_at_its_own(tmp_path, monkeypatch, bound,
                                                                                          sizes):
    size = line_size(1, "n0")  # every record here has this size (seq 1-9)
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 3 if bound != "head bytes" else 1000)
    monkeypatch.setattr(delivery, "MEMORY_BYTES", 3 * size if bound == "head bytes" else 2**30)
    monkeypatch.setattr(delivery, "SPILL_CALLS", 2 if bound in ("calls", "head bytes") else 1000)
    monkeypatch.setattr(delivery, "SPILL_BYTES", {"bytes": 2 * size, "bytes+1": 2 * size + 1}.get(bound, 2**30))
    receiver = hanging()
    q = queue(receiver, storage.Folder(str(tmp_path)))
    seen = []
    for text in notes(9):
        q.put(Note(text))
        seen.append(q.in_memory)
        if len(seen) == 3:
            wait_until(lambda: receiver.tries["n0"] == 1)
            assert not (tmp_path / "pending").exists()  # what fits in memory is not written
    assert seen == sizes and q.waiting == 9
    release(receiver)
    assert q.finish(timeout=30) == 0 and receiver.got == notes(9)


def test_memory__a_journal_read_back_fills_memory_to_its_byte_bound_exactly(tmp_path, monkeypatch):
    folder = storage.Folder(str(tmp_path))
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver, folder)
    for text in notes(9):
        q.put(Note(text))
    assert q.finish(timeout=30) == 9
    size = len(json.dumps({"seq": 1, "op": {"type": "Note", "text": "n0"}, "retry": 0}))  # as compaction writes it
    monkeypatch.setattr(delivery, "MEMORY_BYTES", 3 * size)
    receiver, most = Receiver(), []
    q = Delivery(lambda op: (most.append(q.in_memory), receiver(op)), is_outage, TYPES)
    q.load(folder)
    assert q.finish(timeout=30) == 0
    assert receiver.got == notes(9) and max(most) == 3


# --- the journal's marks ------------------------------------------------------------------------------------------

def test_marks__written_when_asked_or_due_once_per_delivery_and_read_past_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 2)
    monkeypatch.setattr(delivery, "SPILL_CALLS", 2)
    receiver = Receiver()
    receiver.hang_after = 1  # n0 is delivered, then the try of n1 hangs
    q = queue(receiver, storage.Folder(str(tmp_path)))
    q.put(Note("n0"))
    q.put(Note("n1"))
    wait_until(lambda: receiver.tries["n1"] == 1)
    assert receiver.got == ["n0"] and not (tmp_path / "pending").exists()  # delivered from memory: no journal
    q.put(Note("n2"))
    q.put(Note("n3"))  # the tail spills: the journal begins, with no mark (it held nothing before)
    q.persist()  # asked: "delivered up to 1"
    q.persist()  # asked again, nothing new: nothing written
    q.put(Note("n4"))
    q.put(Note("n5"))
    records = journal_lines(storage.Folder(str(tmp_path)))
    assert [r.get("seq", f"done {r.get('done')}") for r in records] == [2, 3, 4, "done 1", 5, 6]
    release(receiver)
    wait_until(lambda: receiver.got == notes(6))
    wait_until(lambda: not (tmp_path / "pending").exists(), timeout=5)  # all it held delivered: deleted at once
    assert q.finish(timeout=30) == 0


def test_marks__at_most_one_per_mark_interval_while_a_journal_drains(tmp_path):
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver, storage.Folder(str(tmp_path)))
    for text in notes(6):
        q.put(Note(text))
    q.persist()
    receiver.down, receiver.hang_after = None, 3
    wait_until(lambda: receiver.tries["n3"] == 1)
    assert receiver.got == notes(3)
    assert [r for r in journal_lines(storage.Folder(str(tmp_path))) if "done" in r] == []  # MARK_EVERY_S not due
    release(receiver)
    assert q.finish(timeout=30) == 0


def test_refill__operations_missing_from_the_journal_are_reported_and_the_rest_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(delivery, "MEMORY_CALLS", 2)
    monkeypatch.setattr(delivery, "SPILL_CALLS", 2)
    receiver = hanging()
    q = queue(receiver, storage.Folder(str(tmp_path)))
    for text in notes(6):
        q.put(Note(text))
    assert q.in_memory == 2 and q.waiting == 6
    for segment in (tmp_path / "pending").iterdir():
        segment.write_text("")  # the journal lost what it held
    with caplog.at_level(logging.ERROR, logger="tuning.delivery"):
        release(receiver)
        assert q.finish(timeout=30) == 0
    assert receiver.got == ["n0", "n1"]
    assert said(caplog) == [f"the fake: 4 operation(s) missing from {q.pending.folder.uri}"]


# --- pace and bounds ----------------------------------------------------------------------------------------------

def test_retry__the_head_is_retried_every_retry_s_and_finish_asks_for_a_try_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "RETRY_S", 0.2)
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver, storage.Folder(str(tmp_path)))
    q.put(Note("n0"))
    time.sleep(1.0)
    assert 1 <= receiver.tries["n0"] <= 10  # about 5; a try without a pause would make thousands
    before = receiver.tries["n0"]
    assert q.finish(timeout=30) == 1  # still down: given up after DOWN_WAIT_S
    assert receiver.tries["n0"] - before <= 10

    monkeypatch.setattr(delivery, "RETRY_S", 3600)
    receiver = Receiver()
    receiver.down = ConnectionError("refused")
    q = queue(receiver, storage.Folder(str(tmp_path / "next")))
    q.put(Note("n0"))
    wait_until(lambda: receiver.tries["n0"] == 1)
    receiver.down = None  # back, an hour before the next try is due: finish asks for it now
    assert q.finish(timeout=30) == 0 and receiver.got == ["n0"]


def test_finish__stops_its_thread_and_a_hanging_receiver_holds_it_no_longer_than_its_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "FLUSH_TIMEOUT_S", 60)
    before = delivery_threads()
    q = queue(Receiver())
    (thread,) = delivery_threads() - before
    assert thread.daemon  # a driver that never calls finish still exits
    q.put(Note("n0"))
    assert q.finish() == 0 and not thread.is_alive()

    receiver = hanging()  # holds the try for 10 s
    q = queue(receiver, storage.Folder(str(tmp_path)))
    q.put(Note("n0"))
    wait_until(lambda: receiver.tries["n0"] == 1)
    start = time.monotonic()
    assert q.finish(timeout=0.2) == 1  # the timeout, then JOIN_S for the try under way
    assert time.monotonic() - start < 8
    assert [r["op"]["text"] for r in journal_lines(storage.Folder(str(tmp_path)))] == ["n0"]
    release(receiver)


# --- operation types ----------------------------------------------------------------------------------------------

def test_op_types__a_registry_of_its_own_takes_frozen_dataclasses_and_names_what_it_refuses():
    types = OpTypes()

    @dataclass(frozen=True)
    class Mark:
        k: int

    class Plain:
        pass

    assert types.add(Mark) is Mark
    assert types.to_json(Mark(3)) == {"type": "Mark", "k": 3} and types.from_json({"type": "Mark", "k": 3}) == Mark(3)
    with pytest.raises(TypeError, match="^Plain: an operation type is a frozen dataclass$"):
        types.add(Plain)
    with pytest.raises(TypeError, match="^Note is not a registered operation type$"):
        types.to_json(Note("x"))  # registered elsewhere, not here
    with pytest.raises(KeyError, match="unknown operation type 'Gone'"):
        types.from_json({"type": "Gone"})
    with pytest.raises(KeyError, match="unknown operation type None"):
        types.from_json({"k": 1})


# --- the journal ---------------------------------------------------------------------------------------------------

def test_journal__a_compactions_leftovers_and_the_segments_before_its_base_are_not_read(tmp_path):
    j = tmp_path / "j"
    j.mkdir()
    (j / "000000.jsonl").write_text('{"seq": 1}\n{"seq": 2}\n')  # compacted: the base below holds what is left
    (j / "000001.base.jsonl").write_text('{"seq": 2}\n')
    (j / "000002.jsonl").write_text('{"seq": 3}\n')
    (j / "000003.base.jsonl.tmp").write_text('{"seq": 9}\n')  # a compaction that crashed while writing
    journal = Journal(storage.Folder(str(j)))
    assert [r["seq"] for r, _ in journal.read()] == [2, 3] and journal.start() == (1, 0)


@pytest.mark.parametrize("appendable", [True, False])
def test_journal__each_cursor_resumes_right_after_its_record(tmp_path, appendable, caplog):
    journal = Journal(storage.Folder(str(tmp_path / "j")), appendable=appendable)
    journal.append([json.dumps({"seq": s}) for s in (1, 2, 3)])
    at = journal.append([json.dumps({"seq": s}) for s in (4, 5)])
    assert [r["seq"] for r, _ in journal.read(at)] == [4, 5]
    records = list(journal.read())
    assert [r["seq"] for r, _ in records] == [1, 2, 3, 4, 5]
    size = len(json.dumps({"seq": 1})) + 1  # a record and its newline
    second = (0, 3 * size) if appendable else (1, 0)
    assert [after for _, after in records] == [(0, size), (0, 2 * size), (0, 3 * size),
                                               (second[0], second[1] + size), (second[0], second[1] + 2 * size)]
    for i, (_, after) in enumerate(records):
        assert [r["seq"] for r, _ in journal.read(after)] == [r["seq"] for r, _ in records[i + 1:]]
    assert not caplog.records  # no cursor fell inside a record


def test_journal__a_damaged_line_is_skipped_with_its_segment_named(tmp_path, caplog):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "000000.jsonl").write_text('{"seq": 1}\n{"seq": 2\n{"seq": 3}\n')
    with caplog.at_level(logging.WARNING, logger="tuning.journal"):
        assert [r["seq"] for r, _ in Journal(storage.Folder(str(tmp_path / "j"))).read()] == [1, 3]
    assert said(caplog, "tuning.journal") == ["skipped a damaged line in journal segment 000000.jsonl: b'{\"seq\": 2'"]


class ObjectStore:
    """A filesystem as an object store looks to the journal (not LocalFileSystem): it records what it writes."""

    def __init__(self):
        self.fs, self.written = pyarrow.fs.LocalFileSystem(), []

    def open_output_stream(self, path):
        self.written.append(path)
        return self.fs.open_output_stream(path)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_journal__on_an_object_store_each_segment_is_one_upload_under_its_name_and_a_new_root_is_made(tmp_path):
    folder = storage.Folder(str(tmp_path / "a" / "b" / "j"))  # parents that do not exist yet
    folder.fs = ObjectStore()
    journal = Journal(folder)
    assert not journal.appendable
    assert journal.replace(json.dumps({"seq": s}) for s in (1, 2)) == 2
    journal.append([json.dumps({"seq": 3})])
    assert folder.fs.written == [folder.path("000000.base.jsonl"), folder.path("000001.jsonl")]
    assert sorted(p.name for p in (tmp_path / "a" / "b" / "j").iterdir()) == ["000000.base.jsonl", "000001.jsonl"]
    assert [r["seq"] for r, _ in Journal(storage.Folder(folder.uri)).read()] == [1, 2, 3]
    local = Journal(storage.Folder(str(tmp_path / "c" / "d" / "j")))  # on a local disk too
    assert local.replace(iter([json.dumps({"seq": 1})])) == 1 and [r["seq"] for r, _ in local.read()] == [1]
