"""trainable.tune_trainable: exact restore, SSL prefixes shared or (when corrupt) retrained, the data cache."""
import torch

from conftest import small_config
from trainable.config import resolve
from trainable.prefix_store import PrefixStore, prefix_key
from trainable.tune_trainable import DataCache, MixTrainable

TIMING = {"epoch_time_s", "train_time_s", "images_per_s", "time_this_iter_s", "time_total_s", "timestamp", "date",
          "time_since_restore", "pid", "trial_id", "iterations_since_restore", "training_iteration", "hostname",
          "node_ip", "config", "ssl_epochs_reused", "ssl_time_reused_s", "checkpoint_dir_name", "should_checkpoint"}


def _config(store=None, **kw):
    cfg = {**small_config(**kw).to_dict(), "_threads": 1}
    return {**cfg, "_prefix_store": str(store)} if store else cfg


def _comparable(result):
    """A result without timings and without NaN (no accuracy yet), which never equals itself."""
    return {k: v for k, v in result.items() if k not in TIMING and v == v}


def _train_all(t):
    out = []
    while not t.engine.done:
        out.append(_comparable(t.train()))
    return out


def test_trainable__restore_continues_exactly(tmp_path):
    cfg = _config(e_ssl=3, e_sl=3, rho=0.34)
    full = MixTrainable(config=cfg)
    ref = [full.train() for _ in range(5)]
    part = MixTrainable(config=cfg)
    for _ in range(3):
        part.train()
    ckpt = part.save(str(tmp_path / "ckpt"))
    resumed = MixTrainable(config=cfg)
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
    plain = MixTrainable(config=_config(e_ssl=4, e_sl=4, rho=0.5))  # plan: 2 SSL-only, 2 mix, 2 SL
    reference = _train_all(plain)

    producer = MixTrainable(config=_config(store, method="ssl_sl", e_ssl=4, e_sl=4))
    for _ in range(4):
        producer.train()
    key = prefix_key(producer.run, "cpu")
    assert PrefixStore(str(store)).epochs(key) == [1, 2, 3, 4]  # stride e_ssl // 4 = 1

    shared = MixTrainable(config=_config(store, e_ssl=4, e_sl=4, rho=0.5, alpha=0.5))
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
    plain = MixTrainable(config=_config(e_ssl=4, e_sl=4, rho=0.5))
    reference = _train_all(plain)
    producer = MixTrainable(config=_config(store, method="ssl_sl", e_ssl=4, e_sl=4))
    for _ in range(2):
        producer.train()
    key = prefix_key(producer.run, "cpu")
    for f in (store / key).glob("epoch_*.pt"):
        f.write_bytes(f.read_bytes()[:1000])  # every stored prefix truncated
    shared = MixTrainable(config=_config(store, e_ssl=4, e_sl=4, rho=0.5))
    assert shared.engine.epoch == 0 and shared.engine.prefix_epochs == 0
    assert _train_all(shared) == reference
    assert PrefixStore(str(store)).epochs(key) == [1, 2]  # stored again, whole
    for t in (plain, producer, shared):
        t.stop()


def test_data_cache__bounded_in_bytes_least_recently_used_out_and_rebuilt_equal():
    cache = DataCache()
    runs = [resolve(small_config(seed=s)) for s in range(3)]
    first = cache.get(runs[0], None, max_bytes=10**12)
    one = first.nbytes
    assert cache.get(runs[0], None, max_bytes=10**12) is first  # cached
    cache.get(runs[1], None, max_bytes=int(2.5 * one))
    cache.get(runs[0], None, max_bytes=int(2.5 * one))  # touched: now the most recent
    cache.get(runs[2], None, max_bytes=int(2.5 * one))  # over the bound: seed 1 goes
    assert len(cache.entries) == 2
    rebuilt = cache.get(runs[1], None, max_bytes=int(2.5 * one))
    assert rebuilt is not first and len(cache.entries) == 2
    assert cache.get(runs[0], None, max_bytes=1) is not None and len(cache.entries) == 1  # one always stays
    again = DataCache().get(runs[1], None, max_bytes=10**12)
    assert torch.equal(rebuilt.tasks[0].train.images, again.tasks[0].train.images)
