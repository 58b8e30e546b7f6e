"""tuning.progress: the cost estimate, the CPU warning and the one progress line, without Ray."""
import io
from types import SimpleNamespace

from tuning.progress import Estimate, Line, Progress, describe, estimate, paper_setting_on_cpu_warning
from trainable.schedule import phase_plan


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _trial(tid, method="mixtraining", e_sl=4, rho=0.5, last=None):
    return SimpleNamespace(trial_id=tid, config={"method": method, "e_ssl": e_sl, "e_sl": e_sl, "rho": rho},
                           last_result=last or {})


def test_line__rewritten_in_place_on_a_terminal_and_a_new_line_at_most_every_interval_in_a_log():
    clock = _Clock()
    tty, log = _Tty(), io.StringIO()
    on_tty, in_log = Line(tty, tty_every=0.5, clock=clock), Line(log, log_every=30, clock=clock)
    for t, text in ((0, "a"), (0.1, "b"), (0.6, "c"), (20, "d"), (31, "e")):
        clock.now = t
        on_tty.show(text)
        in_log.show(text)
    assert tty.getvalue() == "\r\x1b[Ka\r\x1b[Kc\r\x1b[Kd\r\x1b[Ke"
    assert log.getvalue() == "a\ne\n"
    in_log.show("final", force=True)
    on_tty.close()
    assert log.getvalue().endswith("e\nfinal\n") and tty.getvalue().endswith("e\n")


def test_progress__counts_trials_best_accuracy_per_budget_and_time_left():
    clock, out = _Clock(), io.StringIO()
    p = Progress(planned_epochs=40, line=Line(out, log_every=0, clock=clock), clock=clock)
    a, b, base = _trial("a", e_sl=4), _trial("b", e_sl=8), _trial("s", method="ssl_sl")
    for t in (a, b, base):
        p.on_trial_start(0, [], t)
    clock.now = 20
    p.on_trial_result(0, [], a, {"epoch": 6, "val_acc": 0.5})
    p.on_trial_result(0, [], a, {"epoch": 7, "val_acc": 0.4})  # the best so far stays
    p.on_trial_result(0, [], b, {"epoch": 4, "val_acc": float("nan")})  # no classifier yet: no accuracy
    p.on_trial_result(0, [], base, {"epoch": 8, "val_acc": 0.9})  # a baseline is not MixTraining's best
    a.last_result = {"completed": True, "epoch": 7}
    p.on_trial_complete(0, [], a)
    b.last_result = {"completed": False, "epoch": 4}  # stopped: the other 8 of its 12 epochs are cut
    p.on_trial_complete(0, [], b)
    p.on_trial_error(0, [], base)
    text = p.text()
    assert text.startswith("trials: 1 done, 0 running, 1 stopped early, 1 failed | best val acc: 4ep 50.0% | ")
    # 7 + 4 + 8 = 19 epochs of 40 - 8 cut: 59%; 20 s for 59% leaves about 14 s
    assert "59% of planned epochs, about 14 s left" in text
    assert out.getvalue().splitlines()[-1] == text


def test_describe__trials_epochs_images_and_time_on_the_slots_and_the_cpu_warning():
    est = Estimate()
    est.add(phase_plan(10, 10, 0.5), sl_images=1000, ssl_images=2000, count=3)
    assert (est.trials, est.epochs) == (3, 3 * 15)  # e_mix = 5: 5 SSL-only + 5 mix + 5 SL-only
    assert est.images == {"ssl": 3 * 5 * 2000, "mix": 3 * 5 * 1000, "sl": 3 * 5 * 1000}
    line = describe(est, {"ssl": 0.001, "mix": 0.003, "sl": 0.001}, slots=2, early_stopping=True)
    # (30,000 x 1 ms + 15,000 x 3 ms + 15,000 x 1 ms) / 2 slots = 45 s
    assert line == ("this search: about 3 trials, 45 epochs, 0.06 M images; about 45 s of training steps on 2 "
                    "slot(s) at most (the scheduler stops some trials early); start-up, evaluation and checkpoints "
                    "add to it")
    assert describe(est, {}, 1, False) == "this search: about 3 trials, 45 epochs, 0.06 M images"
    assert "--gpus-per-trial 1 " in paper_setting_on_cpu_warning("vit_tiny", 0)
    assert paper_setting_on_cpu_warning("vit_tiny", 0.25) is None and paper_setting_on_cpu_warning("tiny", 0) is None


def test_estimate__counts_the_queued_trials_and_the_confirmation_runs():
    from search_spaces import load
    from trainable.datasets import load_dataset
    from tuning.searcher import ExperimentSearcher
    space = load("smoke")
    base = {"datasets": ["digits"], "ssl_dataset": None, "val_frac": 0.1}
    loaded = {"digits": load_dataset("digits", "data")}

    def searcher(confirm):
        return ExperimentSearcher(space, fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0, num_samples=1,
                                  inner=None, metric="val_acc", mode="max", confirm_seeds=confirm)
    plain, confirmed = (estimate(searcher(c), space, loaded, base) for c in (0, 3))
    assert plain.trials == 4 + 4 * 2  # the baselines and a grid of 4 on 2 seeds
    assert confirmed.trials == plain.trials + 3 * 4  # on 3 fresh seeds: chosen, default, SL, SSL+SL
    assert confirmed.epochs > plain.epochs
