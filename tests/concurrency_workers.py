"""Process targets for the concurrency tests, in a module that spawned processes import quickly (torch only
where a target needs it)."""
import random
import time

from trainable import storage


def write_loop(path, value, n):
    for _ in range(n):
        storage.write_durably(path, bytes([value]) * 3_000_000)


def state(epoch, size=20_000):
    import torch
    return {"w": torch.full((size,), float(epoch)), "epoch": epoch}


def save_evict_loop(root, n):
    from trainable.prefix_store import PrefixStore
    store = PrefixStore(root, max_bytes=3 * 90_000)  # ~80 kB a file: at most three kept
    for e in range(1, n + 1):
        store.save("k", e, state(e))


def load_loop(root, n, failures):
    import torch

    from trainable.prefix_store import PrefixStore
    store = PrefixStore(root)
    for _ in range(n):
        try:
            s = store.load_longest("k", 10_000, torch.device("cpu"))
            if s is not None and not torch.equal(s["w"], torch.full((20_000,), float(s["epoch"]))):
                failures.put("a prefix loaded with the wrong contents")
        except Exception as e:  # noqa: BLE001 - any exception here is the failure under test
            failures.put(repr(e))


# --- the driver lock -------------------------------------------------------------------------------------

class QuickLock(storage.DriverLock):
    """A driver lock on a test's time scale."""
    HEARTBEAT_S = 0.05
    STALE_S = 0.5


class SlowFolder(storage.Folder):
    """A folder whose writes and exclusive creates land 0-200 ms after they are made, as on a loaded file server."""

    def write_bytes(self, name, data):
        time.sleep(random.uniform(0, 0.2))
        super().write_bytes(name, data)

    def create_exclusive(self, name, data):
        time.sleep(random.uniform(0, 0.2))
        return super().create_exclusive(name, data)


def race_takeovers(roots, barrier, outcomes, seed):
    """One takeover attempt per folder, all racers starting together; (round, won) each into `outcomes`.
    A winner holds the lock until every racer has tried."""
    random.seed(seed)
    for i, root in enumerate(roots):
        barrier.wait(timeout=120)
        try:
            lock = QuickLock(SlowFolder(root)).acquire()
        except storage.LockHeld:
            lock = None
        outcomes.put((i, lock is not None))
        barrier.wait(timeout=120)
        if lock is not None:
            lock.release()


def hold_until_lost(root, events):
    """Take the lock, say so, then report whether the heartbeat found it lost (and on_lost was called)."""
    called = []
    lock = QuickLock(storage.Folder(root), on_lost=called.append).acquire()
    events.put("held")
    lost = lock.lost.wait(timeout=120)
    events.put(("lost", lost, called == [lock]))
