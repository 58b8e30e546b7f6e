"""A search of many trivial trials on one driver: throughput, driver memory, state and store sizes, the end.

    python benchmarks/scale.py --trials 1000 --out benchmarks/results/scale.json

Runs `tuning/search.py --space continuous --search random --scheduler fifo --no-baselines --num-samples N`
(one seed, one fraction, no confirmation runs: exactly N MixTraining trials; the `test` model on digits at --epoch-scale 0.02,
1 or 2 epochs per phase) in this process, on a local Ray instance of the 2 cores, tracking on (a sqlite
MLflow store in a temporary folder), and reports:
- trials per second per CPU, first trial's start to last trial's end (Ray's own figure: 10,000 trials on
  16 CPUs in 715 s, 0.87 trials/s/CPU);
- the driver's resident memory (this process: Ray Tune's controller, the searchers, the tracking queue) at
  a tenth, half and all of the trials finished, and its growth per trial between the first and the last;
- the experiment folder on disk (Tune's experiment_state-*.json, the searcher's state, everything);
- the tracking store (database and artifacts), the tracking queue's backlog when the last trial ended and
  how long it took to drain;
- the time from the last trial's end to the printed table, by stage.

How it measures: the driver builds its callbacks itself, so this script replaces the progress line's class
in `tuning.driver` with a subclass that also records each trial's end (`Milestones`), and wraps
`driver.make_tuner`, `driver.fit`, `driver.finish` and `tracking.finish_parent` to keep the tracking
callback and stamp the stages; a thread samples the RSS and the queue's backlog every second.
`--tracemalloc` also compares Python allocation snapshots at a tenth of the trials and at the last
(slower: for finding where the driver grows, not for the figures).
"""
from __future__ import annotations

import os
import pickle
import shutil
import platform
import sys
import threading
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from tuning import driver, search, tracking
from tuning.progress import Progress

from common import run_searches, search_parser, write_result  # benchmarks/common.py (this folder is on sys.path when run as a script)

RAY_TRIALS_PER_S_PER_CPU = 10_000 / 715 / 16  # Ray Tune's scalability figure (10,000 trials, 16 CPUs, 715 s)
GROWTH_GOAL_MB = 0.2  # per trial
END_GOAL_S = 30.0  # last trial's end to the printed table, at 1,000 trials
SAMPLE_EVERY_S = 1.0
CPUS = 2  # common.run_searches' local Ray instance
MB = 2**20  # every "MB" this script prints or writes is a MiB (2**20 bytes); sizes in the JSON are bytes


class Measure:
    """What the hooks record, shared by the callback (on the driver's Tune loop) and the sampling thread."""

    def __init__(self, trials: int, tracemalloc_at: int | None, trim: bool = False):
        self.trials, self.trim = trials, trim
        self.milestones = sorted({max(1, trials // 10), max(1, trials // 2), trials})
        self.tracemalloc_at = tracemalloc_at
        self.process = psutil.Process()
        self.t0 = time.monotonic()
        self.finished = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.rss_at: dict[int, float] = {}  # trials finished -> RSS (MB), taken right after that trial's end
        self.waiting_at_last_end: int | None = None
        self.samples: list[tuple[float, int, float, int | None]] = []  # (s, finished, RSS MB, queue backlog)
        self.stamps: dict[str, float] = {}
        self.tracker = self.searcher = None
        self.snapshots: list[tracemalloc.Snapshot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="scale-sampler", daemon=True)

    def __getstate__(self):  # Tune pickles the callbacks with the tuner, and so this: nothing of it travels
        return {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / MB

    def waiting(self) -> int | None:
        delivery = self.tracker and self.tracker.delivery
        return None if delivery is None else delivery.waiting

    def trial_started(self) -> None:
        if self.first_start is None:
            self.first_start = self.now()

    def trial_ended(self) -> None:
        self.finished += 1
        if self.finished in self.milestones:
            self.rss_at[self.finished] = self.rss_mb()
        if self.tracemalloc_at and self.finished in (self.tracemalloc_at, self.trials) and tracemalloc.is_tracing():
            self.snapshots.append(tracemalloc.take_snapshot())
        self.last_end, self.waiting_at_last_end = self.now(), self.waiting()  # until a later trial ends

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.samples.append((self.now(), self.finished, self.rss_mb(), self.waiting()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


MEASURE: Measure | None = None


class Milestones(Progress):
    """The search's progress line, also telling MEASURE of every trial's start and end."""

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        MEASURE.trial_started()
        super().on_trial_start(iteration, trials, trial, **info)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        if MEASURE.trim:  # what-if: a finished trial's running averages dropped (only a running trial updates them)
            trial.run_metadata.metric_n_steps = {}
            trial.run_metadata.invalidate_cache()
        MEASURE.trial_ended()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        super().on_trial_error(iteration, trials, trial, **info)
        MEASURE.trial_ended()


def install_hooks() -> None:
    """The measuring hooks in the driver (see the module's docstring)."""
    def stamped(name: str, fn, keep=None):
        def wrapper(*a, **kw):
            MEASURE.stamps.setdefault(f"{name}_start", MEASURE.now())
            out = fn(*a, **kw)
            MEASURE.stamps[f"{name}_end"] = MEASURE.now()
            if keep:
                keep(out)
            return out
        return wrapper

    def keep_tracker(out):
        MEASURE.tracker = out[1]

    def keep_searcher(out):
        MEASURE.searcher = out

    driver.Progress = Milestones
    driver.make_tuner = stamped("make_tuner", driver.make_tuner, keep_tracker)
    driver.make_searcher = stamped("make_searcher", driver.make_searcher, keep_searcher)
    driver.fit = stamped("fit", driver.fit)
    driver.finish = stamped("finish", driver.finish)
    tracking.finish_parent = stamped("finish_parent", tracking.finish_parent)


def search_argv(args, storage: str, store: str) -> list[str]:
    return ["--space", "continuous", "--search", "random", "--scheduler", "fifo", "--no-baselines",
            "--num-samples", str(args.trials), "--seeds", "1", "--confirm-seeds", "0", "--dataset", args.dataset, "--model", args.model,
            "--epoch-scale", str(args.epoch_scale), "--storage-path", storage, "--name", "scale",
            "--mlflow-uri", f"sqlite:///{store}/mlflow.db", "--verbose", "0"]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def experiment_sizes(folder: Path) -> dict:
    """The experiment folder on disk: Tune's state, the searcher's, the trials' folders, everything."""
    files = [f for f in folder.iterdir() if f.is_file()]
    trials = [d for d in folder.iterdir() if d.is_dir() and d.name.startswith("MixTrainable")]
    state = [f for f in files if f.name.startswith("experiment_state")]
    searcher = [f for f in files if f.name.startswith(("search_gen_state", "searcher-state"))]
    return {"experiment_state_json_bytes": sum(f.stat().st_size for f in state),
            "experiment_state_files": sorted(f.name for f in state),
            "searcher_state_bytes": sum(f.stat().st_size for f in searcher),
            "searcher_state_files": sorted(f.name for f in searcher),
            "trial_folders": len(trials), "trial_folders_bytes": sum(folder_bytes(d) for d in trials),
            "folder_bytes": folder_bytes(folder),
            "largest_files": sorted(((f.name, f.stat().st_size) for f in files), key=lambda x: -x[1])[:6]}


def store_sizes(store: Path) -> dict:
    db = store / "mlflow.db"
    return {"db_bytes": db.stat().st_size if db.exists() else 0,
            "artifacts_bytes": folder_bytes(store) - (db.stat().st_size if db.exists() else 0),
            "store_bytes": folder_bytes(store)}


def bookkeeping(m: Measure) -> dict:
    """How much the driver's own structures hold at the end: the searcher's, the tracking callback's."""
    out = {}
    s = m.searcher
    if s is not None:
        out["searcher_pickled_bytes"] = len(pickle.dumps(s.__dict__))  # what the searcher's state file holds
        out["searcher_inner_pickled_bytes"] = len(pickle.dumps(s.inner)) if s.inner else 0
        out["searcher_entries"] = {"configs": len(s.configs), "outcomes": len(s.outcomes),
                                   "known": sum(map(len, s.known.values())), "trial_group": len(s.trial_group),
                                   "groups": len(s.groups), "queue": len(s.queue)}
    if m.tracker is not None:
        out["tracker_runs"] = len(m.tracker.runs)
        d = m.tracker.delivery
        out["delivery_left"] = None if d is None else d.waiting
        out["delivery_set_aside"] = None if d is None else d.set_aside
    return out


def growth_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n_trials: int, top: int = 15) -> dict:
    """Where Python's allocations grew between the snapshots: by line and by file, in MB and bytes per trial."""
    keep = tracemalloc.Filter(False, tracemalloc.__file__)

    def rows(key: str):
        stats = after.filter_traces([keep]).compare_to(before.filter_traces([keep]), key)
        return [{"site": str(s.traceback[0]) if key != "traceback" else " <- ".join(map(str, list(s.traceback)[:4])),
                 "growth_mb": s.size_diff / MB, "bytes_per_trial": s.size_diff / max(1, n_trials),
                 "blocks": s.count_diff} for s in stats[:top]]

    total = sum(s.size for s in after.statistics("filename")) - sum(s.size for s in before.statistics("filename"))
    return {"between_trials": n_trials, "python_growth_mb": total / MB, "by_file": rows("filename"),
            "by_line": rows("lineno")}


def run(args, storage: str) -> dict:
    global MEASURE
    store = Path(storage) / "mlflow"
    store.mkdir()
    argv = search_argv(args, str(Path(storage) / "ray"), str(store))
    print("search: python tuning/search.py " + " ".join(argv), flush=True)
    parser = search.build_parser()
    sargs = parser.parse_args(argv)
    search.validate(sargs, parser)
    snapshot_at = max(1, args.trials // 10) if args.tracemalloc else None
    MEASURE = m = Measure(args.trials, snapshot_at, args.trim_finished)
    if args.tracemalloc:
        tracemalloc.start(3)  # frames per allocation: enough to name the caller, cheap enough to finish
    m.start()
    rss_start = m.rss_mb()
    outcome = driver.run(sargs)
    m.stamps["run_end"] = m.now()
    table = search.render(outcome)
    print(table, flush=True)
    m.stamps["printed"] = m.now()
    m.stop()
    if args.tracemalloc:
        tracemalloc.stop()
    folder = Path(storage) / "ray" / "scale"
    trials_s = (m.last_end - m.first_start) if m.last_end and m.first_start is not None else None
    first, last = min(m.rss_at), max(m.rss_at)
    growth = (m.rss_at[last] - m.rss_at[first]) / max(1, last - first)
    stamps, end = m.stamps, m.last_end
    drained = next((t for t, _, _, waiting in m.samples if t >= end and waiting == 0), None) if end else None
    result = {
        "trials": len(outcome.df), "failed": int(outcome.df["error"].notna().sum()),
        "completed": int(outcome.df["completed"].sum()),
        "wall_s": stamps["printed"], "trials_s": trials_s,
        "trials_per_s": m.finished / trials_s if trials_s else None,
        "trials_per_s_per_cpu": m.finished / trials_s / CPUS if trials_s else None,
        "ray_trials_per_s_per_cpu": RAY_TRIALS_PER_S_PER_CPU,
        "driver_rss_mb": {"at_start": rss_start, **{str(k): v for k, v in sorted(m.rss_at.items())},
                          "at_end": m.samples[-1][2] if m.samples else None},
        "driver_cpu_s": sum(m.process.cpu_times()[:2]),  # the driver's own CPU time (all its threads)
        "growth_mb_per_trial": growth, "growth_between_trials": [first, last], "growth_goal_mb": GROWTH_GOAL_MB,
        "experiment": experiment_sizes(folder),
        "tracking_store": store_sizes(store),
        "delivery": {"waiting_at_last_trial_end": m.waiting_at_last_end,
                     "max_waiting": max((s[3] or 0 for s in m.samples), default=0),
                     "drained_s_after_last_trial_end": None if drained is None else drained - end},
        "end": {"last_trial_end_to_printed_table_s": stamps["printed"] - end if end else None,
                "goal_s": END_GOAL_S,
                "tune_teardown_s": stamps["fit_end"] - end if end else None,
                "finish_s": stamps["finish_end"] - stamps["finish_start"],
                "rows_and_report_files_s": stamps["finish_parent_start"] - stamps["finish_start"],
                "finish_parent_s": stamps["finish_parent_end"] - stamps["finish_parent_start"],
                "after_finish_s": stamps["run_end"] - stamps["finish_end"],
                "render_and_print_s": stamps["printed"] - stamps["run_end"]},
        "startup_s": {"to_first_trial_start": m.first_start, "stamps": stamps},
        "bookkeeping": bookkeeping(m),
        "samples": [list(s) for s in m.samples],
        "search_command": "python tuning/search.py " + " ".join(argv),
    }
    if args.keep:
        shutil.copytree(storage, args.keep, dirs_exist_ok=True)
    if len(m.snapshots) == 2:
        result["tracemalloc"] = growth_sites(*m.snapshots, args.trials - snapshot_at)
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples = result["samples"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot([s[1] for s in samples], [s[2] for s in samples], lw=1, label="driver RSS, sampled every second")
    marks = {int(k): v for k, v in result["driver_rss_mb"].items() if k.isdigit()}
    ax.plot(list(marks), list(marks.values()), "o", label="at a trial's end")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("driver RSS (MB)")
    ax.set_title(f"{result['trials']} trials: {result['growth_mb_per_trial']:.3f} MB per trial "
                 f"(goal {GROWTH_GOAL_MB} MB)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    import mlflow
    import optuna
    import ray
    import torch
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU used; "
            f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
            f"optuna {optuna.__version__}, mlflow {mlflow.__version__}; load average at start {load}")


def summary(r: dict) -> str:
    rss, e, d, end = r["driver_rss_mb"], r["experiment"], r["delivery"], r["end"]
    marks = ", ".join(f"{k}: {v:.0f} MB" for k, v in rss.items() if k.isdigit())
    lines = [
        f"trials: {r['trials']} ({r['completed']} completed, {r['failed']} failed) in {r['trials_s']:.0f} s from the "
        f"first start to the last end: {r['trials_per_s']:.2f} trials/s, {r['trials_per_s_per_cpu']:.3f} per CPU "
        f"(Ray's figure: {r['ray_trials_per_s_per_cpu']:.2f})",
        f"driver RSS: start {rss['at_start']:.0f} MB; trials finished {marks}; growth "
        f"{r['growth_mb_per_trial']:.3f} MB/trial between {r['growth_between_trials'][0]} and "
        f"{r['growth_between_trials'][1]} (goal <= {GROWTH_GOAL_MB})",
        f"experiment folder: {e['folder_bytes'] / MB:.1f} MB ({e['experiment_state_json_bytes'] / MB:.2f} MB of "
        f"experiment_state-*.json, {e['searcher_state_bytes'] / MB:.2f} MB searcher state, {e['trial_folders']} "
        f"trial folders {e['trial_folders_bytes'] / MB:.1f} MB)",
        f"tracking store: {r['tracking_store']['store_bytes'] / MB:.1f} MB (database "
        f"{r['tracking_store']['db_bytes'] / MB:.1f} MB, artifacts {r['tracking_store']['artifacts_bytes'] / MB:.1f} MB); "
        f"queue: {d['waiting_at_last_trial_end']} call(s) waiting at the last trial's end, at most "
        f"{d['max_waiting']}, drained {_s(d['drained_s_after_last_trial_end'])} after it; "
        f"{r['bookkeeping'].get('delivery_left')} left undelivered",
        f"last trial's end to the printed table: {end['last_trial_end_to_printed_table_s']:.1f} s (goal <= "
        f"{END_GOAL_S:.0f}): Tune's teardown {end['tune_teardown_s']:.1f}, rows and report files "
        f"{end['rows_and_report_files_s']:.1f}, MLflow parent and drain {end['finish_parent_s']:.1f}, pruning "
        f"{end['after_finish_s'] + end['finish_s'] - end['rows_and_report_files_s'] - end['finish_parent_s']:.1f}, "
        f"table {end['render_and_print_s']:.1f}"]
    if tm := r.get("tracemalloc"):
        lines.append(f"Python allocations grew {tm['python_growth_mb']:.1f} MB over {tm['between_trials']} trials; "
                     "top sites:")
        lines += [f"  {s['growth_mb']:8.2f} MB {s['bytes_per_trial']:9.0f} B/trial  {s['site']}" for s in tm["by_line"][:10]]
    return "\n".join(lines)


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f} s"


def main(argv=None) -> int:
    p = search_parser(__doc__, 0.02, "continuous space's 50/75/100 epochs -> 1/2/2 (1 or 2 epochs per phase)")
    p.set_defaults(model="test")
    p.add_argument("--trials", type=int, default=1000, help="MixTraining trials (the search's --num-samples)")
    p.add_argument("--plot", help="RSS against trials finished as a PNG (default: --out with .png)")
    p.add_argument("--keep", metavar="FOLDER", help="copy the experiment folder and the tracking store here at the end")
    p.add_argument("--trim-finished", action="store_true",
                   help="what-if: drop each finished trial's last-5/10 running averages (Tune's metric_n_steps) from "
                        "the driver's trial objects, to measure what bounding them would save")
    p.add_argument("--tracemalloc", action="store_true",
                   help="compare Python allocations at a tenth of the trials and at the last (slower)")
    args = p.parse_args(argv)
    command = " ".join(["python benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}\nmachine: {machine()}", flush=True)
    search.configure_environment()  # as the command does: Ray's old console output, MLflow's HTTP settings
    search.configure_output()
    install_hooks()
    result = run_searches(lambda _, storage: run(args, storage), {"scale": None})["scale"]
    result.update(command=command, machine=machine(), config=vars(args))
    print(summary(result), flush=True)
    if args.plot or args.out:
        plot(result, args.plot or str(Path(args.out).with_suffix(".png")))
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
