"""trainable.tune_trainable: exact restore, SSL prefixes shared or (when corrupt) retrained, the data cache."""
import torch

from conftest import small_config
from trainable.config import resolve
from trainable.prefix_store import PrefixStore, prefix_key
from trainable.tune_trainable import DataCache, MixTrainable, TrialSettings

TIMING = {"epoch_time_s", "train_time_s", "images_per_s", "time_this_iter_s", "time_total_s", "timestamp", "date",
          "time_since_restore", "pid", "trial_id", "iterations_since_restore", "training_iteration", "hostname",
          "node_ip", "config", "ssl_epochs_reused", "ssl_time_reused_s", "checkpoint_dir_name", "should_checkpoint"}


def _trial(store=None, **kw):
    """A trial of small_config(**kw), outside Ray: the search hands `settings` over through tune.with_parameters,
    which wraps setup as this subclass does. store: the SSL-prefix store's folder (None: no sharing)."""
    settings = TrialSettings(threads=1, prefix_store=str(store) if store else None)

    class WithSettings(MixTrainable):
        def setup(self, config):
            super().setup(config, settings=settings)

    return WithSettings(config=small_config(**kw).to_dict())


def _comparable(result):
    """A result without timings and without NaN (no accuracy yet), which never equals itself."""
    return {k: v for k, v in result.items() if k not in TIMING and v == v}


def _train_all(t):
    out = []
    while not t.engine.done:
        out.append(_comparable(t.train()))
    return out


def test_trainable__restore_continues_exactly(tmp_path):
    cfg = dict(e_ssl=3, e_sl=3, rho=0.34)
    full = _trial(**cfg)
    ref = [full.train() for _ in range(5)]
    part = _trial(**cfg)
    for _ in range(3):
        part.train()
    ckpt = part.save(str(tmp_path / "ckpt"))
    resumed = _trial(**cfg)
    resumed.restore(ckpt)
    rest = [resumed.train() for _ in range(2)]
    for a, b in zip(ref[3:], rest):
        assert (a["epoch"], a["phase"], a["loss_sl"], a["val_acc"], a["test_acc"] if "test_acc" in a else None) == \
               (b["epoch"], b["phase"], b["loss_sl"], b["val_acc"], b["test_acc"] if "test_acc" in b else None)
    for k, v in full.engine.model.state_dict().items():
        assert torch.equal(v, resumed.engine.model.state_dict()[k])
    for t in (full, part, resumed):
        t.stop()


def test_prefix_sharing__a_trial_from_a_stored_prefix_equals_one_that_trained_it(tmp_path):
    store = tmp_path / "store"
    plain = _trial(e_ssl=4, e_sl=4, rho=0.5)  # plan: 2 SSL-only, 2 mix, 2 SL
    reference = _train_all(plain)

    producer = _trial(store, method="ssl_sl", e_ssl=4, e_sl=4)
    for _ in range(4):
        producer.train()
    key = prefix_key(producer.run, "cpu")
    assert PrefixStore(str(store)).epochs(key) == [1, 2, 3, 4]  # stride e_ssl // 4 = 1

    shared = _trial(store, e_ssl=4, e_sl=4, rho=0.5, alpha=0.5)
    assert shared.engine.epoch == 2 and shared.engine.prefix_epochs == 2  # the longest prefix it can use
    first = shared.train()
    assert first["ssl_epochs_reused"] == 2 and first["ssl_time_reused_s"] > 0
    rest = [_comparable(first)] + _train_all(shared)
    assert rest == reference[2:]
    for k, v in plain.engine.model.state_dict().items():
        assert torch.equal(v, shared.engine.model.state_dict()[k]), k
    for t in (plain, producer, shared):
        t.stop()


def test_prefix_sharing__a_corrupt_prefix_is_trained_again_with_the_same_result(tmp_path):
    store = tmp_path / "store"
    plain = _trial(e_ssl=4, e_sl=4, rho=0.5)
    reference = _train_all(plain)
    producer = _trial(store, method="ssl_sl", e_ssl=4, e_sl=4)
    for _ in range(2):
        producer.train()
    key = prefix_key(producer.run, "cpu")
    for f in (store / key).glob("epoch_*.pt"):
        f.write_bytes(f.read_bytes()[:1000])  # every stored prefix truncated
    shared = _trial(store, e_ssl=4, e_sl=4, rho=0.5)
    assert shared.engine.epoch == 0 and shared.engine.prefix_epochs == 0
    assert _train_all(shared) == reference
    assert PrefixStore(str(store)).epochs(key) == [1, 2]  # stored again, whole
    for t in (plain, producer, shared):
        t.stop()


def _tensors(data):
    """Every tensor a TrainingData holds, in a fixed order."""
    return [t for task in data.tasks for s in (task.train, task.val, task.test) for t in (s.images, s.labels)] + \
        [data.ssl_images]


def _held(cache, data):
    return any(d is data for d in cache.entries.values())


def test_data_cache__bounded_in_bytes_least_recently_used_out_and_rebuilt_equal():
    cache = DataCache()
    # Half the data, so each seed's subset (and its cache key) holds different images.
    runs = [resolve(small_config(seed=s, fraction=0.5)) for s in range(3)]
    first = cache.get(runs[0], None, max_bytes=10**12)
    bound = int(2.5 * first.nbytes)  # room for two entries
    assert cache.get(runs[0], None, max_bytes=bound) is first  # cached
    second = cache.get(runs[1], None, max_bytes=bound)
    assert cache.get(runs[0], None, max_bytes=bound) is first  # touched: seed 0 is now the most recent
    third = cache.get(runs[2], None, max_bytes=bound)  # over the bound: seed 1, the least recently used, goes
    assert _held(cache, first) and _held(cache, third) and not _held(cache, second) and len(cache.entries) == 2

    rebuilt = cache.get(runs[1], None, max_bytes=bound)  # seed 1 again: made anew (seed 0 goes now)
    assert rebuilt is not second and _held(cache, rebuilt) and not _held(cache, first)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(rebuilt), _tensors(second), strict=True))
    assert not torch.equal(first.tasks[0].train.images, second.tasks[0].train.images)  # the keys' data differ
    assert cache.get(runs[0], None, max_bytes=1) is not None and len(cache.entries) == 1  # one always stays
