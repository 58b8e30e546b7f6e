"""An ordered, persisted, threaded queue of typed operations; it knows nothing of what they do.

Producers `put` operations and never wait for the receiver; one thread hands them, oldest first, to
the `deliver` function the queue was given. On an error, the `is_outage` function it was given decides:
- an outage (the receiver unreachable, overloaded or refusing our credentials): the operation stays at
  the head and is retried every RETRY_S; nothing is dropped;
- anything else (bad input, a missing file, a bug): that operation alone is set aside, with its error,
  in the dead-letter journal, and the next one goes on; the next `load` of the folder retries it once.

Operations are frozen dataclasses registered in an `OpTypes`, which turns them into JSON and back, so a
journal is replayed apart from the code that wrote it (as Optuna's journal storage replays its
operations). At most MEMORY_CALLS operations (and MEMORY_BYTES of their JSON) wait in memory; newer ones
wait in the journal and are read back in order (a queue given no folder keeps them all in memory).

The journal of a folder is append-only: each operation written once, plus "delivered up to seq K" marks
as operations go out; it is compacted only by `load` and deleted once all it holds is delivered. A
driver that dies replays at most the operations delivered since the last mark: delivery is at least
once, so each operation must bear being delivered twice.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from trainable import storage
from tuning.journal import Cursor, Journal
from tuning.redact import redact

log = logging.getLogger(__name__)

RETRY_S = 2.0  # between tries while the receiver is down
PERSIST_EVERY_S = 10.0  # while the receiver is down, operations not in the journal yet are appended this often
MARK_EVERY_S = 1.0  # while a journal exists, "delivered up to" marks are appended this often at most
MEMORY_CALLS = 1000  # operations waiting in memory at most ...
MEMORY_BYTES = 16 * 2**20  # ... and their JSON's size at most; newer ones wait in the journal
SPILL_CALLS, SPILL_BYTES = 200, 2**20  # newer operations go to the journal together, this many at a time
FLUSH_TIMEOUT_S = 600.0  # finish(): the longest wait for a receiver that answers (a long backlog)
DOWN_WAIT_S = 20.0  # finish(): the longest wait without a delivery once the receiver is known to be down
JOIN_S = 5.0  # finish(): for a delivery under way


class OpTypes:
    """The operation types a queue may carry, by name: frozen dataclasses whose fields hold JSON values."""

    def __init__(self):
        self._types: dict[str, type] = {}

    def add(self, cls: type) -> type:
        """Register an operation type (a class decorator, above @dataclass(frozen=True))."""
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__name__}: an operation type is a frozen dataclass")
        self._types[cls.__name__] = cls
        return cls

    def to_json(self, op) -> dict[str, Any]:
        if self._types.get(type(op).__name__) is not type(op):
            raise TypeError(f"{type(op).__name__} is not a registered operation type")
        return {"type": type(op).__name__, **{f.name: getattr(op, f.name) for f in dataclasses.fields(op)}}

    def from_json(self, data: dict[str, Any]):
        fields = dict(data)
        kind = fields.pop("type", None)
        if kind not in self._types:
            raise KeyError(f"unknown operation type {kind!r}")
        return self._types[kind](**fields)


class Delivery:
    """Operations delivered in order by a background thread (see the module's docstring).

    deliver: does one operation, raising on failure. is_outage: whether an error means the receiver is away
    (the operation is retried) rather than that this operation cannot be done (it is set aside).
    name: the receiver in messages ("MLflow at http://host:5000"). journal, dead_letters: the folders, in the
    folder given to `load`, of the operations waiting and of those set aside.
    """

    def __init__(self, deliver: Callable[[Any], None], is_outage: Callable[[BaseException], bool],
                 types: OpTypes, name: str = "the receiver", journal: str = "pending",
                 dead_letters: str = "dead_letters"):
        self.name, self.names = redact(name), (journal, dead_letters)
        self._deliver, self._is_outage, self._types = deliver, is_outage, types
        self.folder: storage.Folder | None = None  # given by `load`
        self.pending: Journal | None = None
        self.dead: Journal | None = None
        self.set_aside = 0  # operations this queue set aside
        self._cond = threading.Condition()  # guards the state below; signals new operations and deliveries
        self._io = threading.Lock()  # one user of the journals at a time
        self._head: deque[tuple[int, str]] = deque()  # the oldest waiting: (seq, JSON record), in memory
        self._tail: deque[tuple[int, str]] = deque()  # the newest, while older ones wait on disk only
        self._bytes = {"head": 0, "tail": 0}
        self._disk = 0  # operations waiting on disk only: after the head, before the tail
        self._cursor: Cursor = (0, 0)  # where (or before where) the journal holds the first of them
        self._seq = self._journaled = self._done = self._marked = 0  # the last put, journaled, done, marked
        self._marked_at = self._persisted_at = self._progress_at = 0.0
        self._down_since: float | None = None  # the first failed try of the current outage
        self._late = 0  # operations delivered since then
        self._poke = self._closing = False
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._head) + self._disk + len(self._tail)

    @property
    def in_memory(self) -> int:
        with self._cond:
            return len(self._head) + len(self._tail)

    def put(self, op) -> None:
        """Queue an operation. Never waits for the receiver; once memory is full, a batch of operations is
        appended to the journal now and then."""
        record = {"op": self._types.to_json(op)}
        with self._cond:
            self._seq += 1
            line = json.dumps({"seq": self._seq, **record})
            if not self._disk and not self._tail and self._fits(len(line)):
                self._head.append((self._seq, line))
                self._bytes["head"] += len(line)
                spill = False
            else:
                self._tail.append((self._seq, line))
                self._bytes["tail"] += len(line)
                spill = len(self._tail) >= SPILL_CALLS or self._bytes["tail"] >= SPILL_BYTES
            self._cond.notify_all()
        if spill:
            self.persist()

    def _fits(self, size: int) -> bool:
        return not self._head or (len(self._head) < MEMORY_CALLS and self._bytes["head"] + size <= MEMORY_BYTES)

    def load(self, folder: storage.Folder) -> None:
        """Keep the journals in `folder` from now on, with what an earlier driver left there first: the
        operations it set aside (retried once), then those it did not deliver. Before the first `put`."""
        with self._io:
            if self._seq:
                raise RuntimeError("Delivery.load() comes before the first put()")
            pending, dead = (Journal(storage.Folder(f"{folder.uri}/{name}")) for name in self.names)
            counts = _compact(pending, dead) if pending.exists() or dead.exists() else {"pending": 0}
            with self._cond:
                self.folder, self.pending, self.dead = folder, pending, dead
                self._seq = self._journaled = self._disk = counts["pending"]
                self._cursor = pending.start()
                self._cond.notify_all()
        if counts["pending"]:
            log.info("%s: %d operation(s) an earlier driver did not deliver go first (%d of them set aside then, "
                     "retried once now)", self.name, counts["pending"], counts["retried"])
        if counts.get("kept"):
            log.warning("%s: %d operation(s) failed again when retried; they stay, with their errors, in %s",
                        self.name, counts["kept"], redact(dead.folder.uri))

    def persist(self) -> None:
        """Append every waiting operation not in the journal yet (the tail leaves memory then), and how far
        delivery got: a driver that dies from here on loses none. A journal all delivered is deleted."""
        with self._io:
            if self.pending is None:
                return
            with self._cond:
                new = [item for item in self._head if item[0] > self._journaled] + list(self._tail)
                moved = len(self._tail)
                mark = self._done if self.pending.exists() and self._done > self._marked else 0
                delivered = not new and self._journaled <= self._done
            if delivered:
                if self.pending.exists():
                    self.pending.delete()
                return
            if not new and not mark:
                return
            start = self.pending.append([json.dumps({"done": mark})] * bool(mark) + [line for _, line in new])
            with self._cond:
                self._journaled = max(self._journaled, new[-1][0] if new else 0)
                self._marked = max(self._marked, mark)
                self._marked_at = self._persisted_at = time.monotonic()
                if moved and not self._disk:
                    self._cursor = start
                self._disk += moved
                for _ in range(moved):
                    self._bytes["tail"] -= len(self._tail.popleft()[1])

    def finish(self, timeout: float | None = None) -> int:
        """Deliver what waits, then stop. Gives up after `timeout` s (FLUSH_TIMEOUT_S), or after DOWN_WAIT_S
        without a delivery while the receiver is known to be down; what is left stays in the journal for
        the next `load`. Returns how many operations are left."""
        start = time.monotonic()
        deadline = start + (FLUSH_TIMEOUT_S if timeout is None else timeout)
        with self._cond:
            self._poke = True
            self._cond.notify_all()
            while (self._head or self._disk or self._tail) and (now := time.monotonic()) < deadline:
                if self._down_since is not None and now - max(start, self._progress_at) >= DOWN_WAIT_S:
                    break
                self._cond.wait(min(0.5, deadline - now))
            self._closing = True
            self._cond.notify_all()
        self._thread.join(JOIN_S)
        self.persist()
        return self.waiting

    # --- the delivery thread -----------------------------------------------------------------------

    def _run(self) -> None:
        """Oldest first; while the receiver is down, the head is retried every RETRY_S."""
        while self._next():
            seq, line = self._head[0]  # only this thread takes from the head
            if self._attempt(line):
                self._handled(seq)
                continue
            if time.monotonic() - self._persisted_at >= PERSIST_EVERY_S:
                self.persist()
            self._sleep(RETRY_S)

    def _next(self) -> bool:
        """Wait until an operation waits and the head holds the oldest; False once the queue closes."""
        while True:
            with self._cond:
                while not self._closing and not (self._head or self._disk or self._tail):
                    self._cond.wait()
                if self._closing or self._head:
                    return not self._closing
            self._refill()

    def _refill(self) -> None:
        """The empty head refilled: from the journal, where the oldest wait, else from the tail."""
        with self._io:
            with self._cond:
                disk, cursor, done = self._disk, self._cursor, self._done
            taken, size = [], 0
            for record, after in self.pending.read(cursor) if disk else ():
                if record.get("seq", 0) > done:
                    taken.append((record["seq"], json.dumps(record)))
                    size, cursor = size + len(taken[-1][1]), after
                    if len(taken) >= min(disk, MEMORY_CALLS) or size >= MEMORY_BYTES:
                        break
            if disk and not taken:
                log.error("%s: %d operation(s) missing from %s", self.name, disk, redact(self.pending.folder.uri))
            with self._cond:
                self._disk, self._cursor = (self._disk - len(taken) if taken else 0), cursor
                self._head.extend(taken)
                self._bytes["head"] += size
                while not self._disk and self._tail and self._fits(len(self._tail[0][1])):
                    self._head.append(self._tail.popleft())
                    self._bytes["tail"] -= len(self._head[-1][1])
                    self._bytes["head"] += len(self._head[-1][1])

    def _attempt(self, line: str) -> bool:
        """Deliver one operation; False while the receiver is down. Any other error sets it aside."""
        record = json.loads(line)
        try:
            self._deliver(self._types.from_json(record["op"]))
        except Exception as error:  # noqa: BLE001 - whatever one operation raises, the next must go on
            if self._is_outage(error):
                self._went_away(error)
                return False
            self._put_aside(record, error)
        return True

    def _put_aside(self, record: dict, error: BaseException) -> None:
        text = redact(f"{type(error).__name__}: {error}")
        kind = record["op"].get("type")
        self.set_aside += 1
        with self._io:
            if self.dead is not None:
                self.dead.append([json.dumps({"op": record["op"], "error": text, "retried": record.get("retry", 0)})])
        where = f"set aside in {redact(self.dead.folder.uri)}" if self.dead is not None else "lost (no folder)"
        log.warning("%s refused %s (%s): %s; the next operations go on", self.name, kind, _first_line(text), where)

    def _handled(self, seq: int) -> None:
        """The head is delivered or set aside: the next one. A journal is marked now and then, and deleted
        once all it holds is done."""
        with self._cond:
            if self._closing:
                return  # finish() has journaled what waits; the next load may deliver this one again
            self._bytes["head"] -= len(self._head.popleft()[1])
            self._done, self._progress_at = seq, time.monotonic()
            drained = not (self._head or self._disk or self._tail)
            self._cond.notify_all()
            if self._down_since is not None:
                self._late += 1
                if drained:
                    log.info("%s answers again after %.0f s: delivered the %d operation(s) that waited", self.name,
                             self._progress_at - self._down_since, self._late)
                    self._down_since = None
            due = self._journaled <= self._done or self._progress_at - self._marked_at >= MARK_EVERY_S
        if self.pending is not None and self.pending.exists() and due:
            self.persist()

    def _went_away(self, error: BaseException) -> None:
        """One warning per outage, at its start."""
        with self._cond:
            if self._down_since is not None:
                return
            self._down_since, self._late = time.monotonic(), 0
        log.warning("%s does not answer (%s): its operations wait, in order, and are retried every %g s", self.name,
                    _first_line(redact(str(error)) or type(error).__name__), RETRY_S)

    def _sleep(self, seconds: float) -> None:
        """Until the next try: `seconds`, or less when finish() asks for a try now."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not (self._closing or self._poke) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            self._poke = False


def _compact(pending: Journal, dead: Journal) -> dict[str, int]:
    """An earlier driver's journals made into one: the operations set aside and not retried yet (each
    retried once), then those not delivered, numbered from 1; the dead letters keep those retried already."""
    done = max((r["done"] for r, _ in pending.read() if "done" in r), default=0)
    counts = {"retried": 0, "kept": 0}

    def replay() -> Iterator[tuple[dict, int]]:
        for record, _ in dead.read():
            counts["kept" if record.get("retried") else "retried"] += 1
            if not record.get("retried"):
                yield record["op"], 1
        for record, _ in pending.read():
            if record.get("seq", 0) > done:
                yield record["op"], record.get("retry", 0)

    counts["pending"] = pending.replace(json.dumps({"seq": seq, "op": op, "retry": retry})
                                        for seq, (op, retry) in enumerate(replay(), 1))
    dead.replace(json.dumps(r) for r, _ in dead.read() if r.get("retried"))
    return counts


def _first_line(text: str) -> str:
    return next(itertools.chain((s for s in text.strip().splitlines() if s.strip()), [""]))[:300]
