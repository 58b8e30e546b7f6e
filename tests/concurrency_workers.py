"""Process targets for the concurrency tests, in a module that spawned processes import quickly."""
import torch

from trainable import storage
from trainable.prefix_store import PrefixStore


def write_loop(path, value, n):
    for _ in range(n):
        storage.write_durably(path, bytes([value]) * 3_000_000)


def state(epoch, size=20_000):
    return {"w": torch.full((size,), float(epoch)), "epoch": epoch}


def save_evict_loop(root, n):
    store = PrefixStore(root, max_bytes=3 * 90_000)  # ~80 kB a file: at most three kept
    for e in range(1, n + 1):
        store.save("k", e, state(e))


def load_loop(root, n, failures):
    store = PrefixStore(root)
    for _ in range(n):
        try:
            s = store.load_longest("k", 10_000, torch.device("cpu"))
            if s is not None and not torch.equal(s["w"], torch.full((20_000,), float(s["epoch"]))):
                failures.put("a prefix loaded with the wrong contents")
        except Exception as e:  # noqa: BLE001 - any exception here is the failure under test
            failures.put(repr(e))
