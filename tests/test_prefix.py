"""Sharing SSL-only prefixes between trials: exact, safe under concurrency, bounded, scheduled."""
import multiprocessing as mp

import torch
from conftest import small_config
from ray.tune.search import Searcher

from search_spaces import get_space
from trainable.config import resolve
from trainable.prefix_store import PrefixStore, prefix_key
from trainable.tune_trainable import MixTrainable
from tuning.searcher import ExperimentSearcher

TIMING = {"epoch_time_s", "train_time_s", "images_per_s", "time_this_iter_s", "time_total_s", "timestamp", "date",
          "time_since_restore", "pid", "trial_id", "iterations_since_restore", "training_iteration", "hostname",
          "node_ip", "config", "ssl_epochs_reused", "ssl_time_reused_s", "checkpoint_dir_name", "should_checkpoint"}


def _config(store=None, **kw):
    cfg = {**small_config(**kw).to_dict(), "_threads": 1}
    return {**cfg, "_prefix_store": str(store)} if store else cfg


def _train_all(t):
    out = []
    while not t.engine.done:
        out.append({k: v for k, v in t.train().items() if k not in TIMING})
    return out


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
    rest = [{k: v for k, v in first.items() if k not in TIMING}] + _train_all(shared)
    assert rest == reference[2:]
    for k, v in plain.engine.model.state_dict().items():
        assert torch.equal(v, shared.engine.model.state_dict()[k]), k
    for t in (plain, producer, shared):
        t.stop()


def test_prefix_key__differs_exactly_when_the_ssl_phase_can_differ():
    base = small_config(e_ssl=4, e_sl=4)
    same = [base.replace(alpha=0.9), base.replace(rho=1.0), base.replace(lam=0.1), base.replace(e_sl=9),
            base.replace(method="ssl_sl"), base.replace(sl_lr=1.0)]
    other = [base.replace(seed=1), base.replace(e_ssl=5), base.replace(fraction=0.5), base.replace(ssl_lr=1e-3),
             base.replace(batch_size=64), base.replace(datasets=("mnist",))]
    k = prefix_key(resolve(base), "cpu")
    assert all(prefix_key(resolve(c), "cpu") == k for c in same)
    assert all(prefix_key(resolve(c), "cpu") != k for c in other)
    assert prefix_key(resolve(base), "cuda") != k


def _save_many(root, value):
    store = PrefixStore(root)
    for _ in range(20):
        store.save("k", 3, {"w": torch.full((50_000,), value), "epoch": 3})


def test_prefix_store__concurrent_writers_of_one_prefix_leave_one_whole_file(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path), 7.0)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = PrefixStore(str(tmp_path))
    assert store.epochs("k") == [3]
    assert torch.equal(store.load("k", 3, torch.device("cpu"))["w"], torch.full((50_000,), 7.0))
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".tmp")]


def test_prefix_store__size_bound_evicts_the_oldest_and_longest_picks_at_most_k(tmp_path):
    store = PrefixStore(str(tmp_path), max_bytes=3 * 450_000)
    for e in (1, 2, 3, 4):
        store.save("k", e, {"w": torch.zeros(100_000)})  # ~400 kB each
    assert store.epochs("k") == [2, 3, 4]
    assert store.longest("k", 3) == 3 and store.longest("k", 1) == 0 and store.longest("other", 9) == 0


def test_searcher__holds_back_a_trial_whose_prefix_a_running_trial_is_computing():
    s = ExperimentSearcher(get_space("paper"), fractions=[1.0], seeds=1, budgets=[4], epoch_scale=0.04,
                           num_samples=1, inner=None, metric="val_acc", mode="max", share_ssl=True)
    sl, producer = s.suggest("t0"), s.suggest("t1")
    assert (sl["method"], producer["method"], producer["e_ssl"]) == ("sl", "ssl_sl", 4)
    # Mix trials with e_ssl = 4 and rho < 1 need 1..3 SSL-only epochs that t1 (ssl_sl, 4 SSL epochs) will store.
    blocked = [c for c in s.queue if c["e_ssl"] == 4 and c["rho"] < 1.0]
    assert blocked and not any(s._ready(c) for c in blocked)
    started = [s.suggest(f"m{i}") for i in range(len(s.queue))]
    assert not any(c["e_ssl"] == 4 and c["rho"] < 1.0 for c in started if c), "a blocked trial started"
    assert started[-1] is None and all(c in s.queue for c in blocked)
    s.on_trial_result("t1", {"phase": "ssl", "epoch": 1})  # one SSL epoch stored: rho = 0.75 (needs 1) is ready
    ready = s.suggest("m_ready")
    assert (ready["e_ssl"], ready["rho"]) == (4, 0.75)
    s.on_trial_result("t1", {"phase": "sl", "epoch": 5})  # t1 left its SSL phase: all its key's trials may start
    waiting = [c for c in s.queue if c["e_ssl"] == 4]
    assert waiting and all(s._ready(c) for c in waiting)


def test_searcher__optuna_proposals_also_wait_for_a_prefix_being_computed():
    class Inner(Searcher):
        def suggest(self, trial_id):
            return {"alpha": 0.5, "rho": 0.5, "epochs": 100}  # needs 2 of the 4 SSL epochs at scale 0.04

    s = ExperimentSearcher(get_space("paper"), fractions=[1.0], seeds=1, budgets=[4], epoch_scale=0.04,
                           num_samples=2, inner={1.0: Inner(metric="val_acc", mode="max")}, metric="val_acc",
                           mode="max", share_ssl=True)
    assert [s.suggest("b0")["method"], s.suggest("b1")["method"]] == ["sl", "ssl_sl"]  # b1 computes the prefix
    assert s.suggest("p0") is None and len(s.queue) == 1  # the proposal waits in the queue
    s.on_trial_result("b1", {"phase": "ssl", "epoch": 2})
    cfg = s.suggest("p1")
    assert cfg["method"] == "mixtraining" and cfg["_group"] == "p0"  # the group keeps the id Optuna knows
