"""Mutation testing of the modules named in mutation/mutmut.cfg, one module at a time (`make mutation`).

For each module: copy the project's packages, tests and pyproject.toml into build/mutation/<module>/, write
mutmut's setup.cfg there (the shared [mutmut] section plus the module's files to mutate and its tests), run
`mutmut run`, and count what its fast tests kill. A surviving mutant must be killed by a new test or written
down in mutation/equivalent.md (a line starting with "- `<mutant name>`:" and the reason); the run fails when a
survivor is neither. Mutant names are numbered per function, so editing a function renumbers its mutants:
read its new survivors again (`mutmut show <name>` in build/mutation/<module>/, or the survivors file the run
writes there).

    python mutation/run.py                  # every module
    python mutation/run.py summary delivery # some of them
    python mutation/run.py --jobs 1         # mutmut's --max-children (default 2)
"""
from __future__ import annotations

import argparse
import configparser
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mutation" / "mutmut.cfg"
EQUIVALENT = ROOT / "mutation" / "equivalent.md"
WORK = ROOT / "build" / "mutation"
COPIED = ["trainable", "tuning", "search_spaces", "tests", "pyproject.toml"]
# mutmut 3's statuses that count as a kill: a test failed, the mutant hung past mutmut's timeout, or crashed.
KILLED = {"killed", "timeout", "segfault"}


def modules(cfg: configparser.ConfigParser) -> dict[str, dict[str, list[str]]]:
    """{module name: {"mutate": [paths], "tests": [paths]}} from the [module:<name>] sections, in file order."""
    out = {}
    for section in cfg.sections():
        if section.startswith("module:"):
            out[section.split(":", 1)[1]] = {k: cfg.get(section, k).split() for k in ("mutate", "tests")}
    return out


def equivalents() -> dict[str, str]:
    """{mutant name: why it is equivalent} from mutation/equivalent.md."""
    if not EQUIVALENT.exists():
        return {}
    found = re.findall(r"^- `([^`]+)`: (.+)$", EQUIVALENT.read_text(), flags=re.M)
    return dict(found)


def prepare(work: Path, shared: dict[str, str], module: dict[str, list[str]]) -> None:
    """A fresh copy of the project in `work` with mutmut's setup.cfg for this module."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, work / name)
    missing = [p for p in module["mutate"] + module["tests"] if not p.startswith("-") and not (ROOT / p).exists()]
    if missing:
        raise SystemExit(f"mutation/mutmut.cfg names files that do not exist: {', '.join(missing)}")
    cfg = configparser.ConfigParser()
    cfg["mutmut"] = {**shared, "only_mutate": "\n".join(module["mutate"]),
                     "pytest_add_cli_args_test_selection": "\n".join(module["tests"])}
    with open(work / "setup.cfg", "w") as f:
        cfg.write(f)


def mutmut(work: Path, *args: str, capture: bool = False) -> str:
    """Run mutmut in `work`; its output (when captured)."""
    done = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, text=True, check=False,
                          stdout=subprocess.PIPE if capture else None)
    if done.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {work} (exit {done.returncode})")
    return done.stdout or ""


def results(work: Path) -> dict[str, str]:
    """{mutant name: status} of every mutant of the last run in `work`."""
    out = mutmut(work, "results", "--all", "true", capture=True)
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.M))


def main(argv: list[str] | None = None) -> int:
    cfg = configparser.ConfigParser()
    cfg.read(CONFIG)
    table = modules(cfg)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", choices=[[], *table], metavar="MODULE",
                        help=f"some of: {', '.join(table)} (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (mutmut's --max-children)")
    args = parser.parse_args(argv)
    shared = dict(cfg["mutmut"])
    known = equivalents()
    lines, unexplained = [], 0
    for name in args.modules or table:
        work = WORK / name
        start = time.monotonic()
        prepare(work, shared, table[name])
        mutmut(work, "run", "--max-children", str(args.jobs))
        status = results(work)
        seconds = time.monotonic() - start
        killed = sum(s in KILLED for s in status.values())
        left = {m: s for m, s in status.items() if s not in KILLED and s != "skipped"}
        explained = {m for m in left if m in known}
        unexplained += len(left) - len(explained)
        tested = sum(s != "skipped" for s in status.values())
        survivors = work / "survivors.txt"
        survivors.write_text("".join(mutmut(work, "show", m, capture=True) + "\n" for m in sorted(left)))
        lines.append(f"{name}: {killed}/{tested} killed ({100 * killed / max(tested, 1):.1f}%), "
                     f"{len(explained)} equivalent, {len(left) - len(explained)} unexplained, {seconds:.0f} s"
                     + (f"; diffs in {survivors.relative_to(ROOT)}" if left else ""))
        for m in sorted(set(left) - explained):
            lines.append(f"    {m}: {left[m]}")
    print("\n".join(["", "Mutation score per module (killed / tested):", *lines]))
    if unexplained:
        print(f"\n{unexplained} surviving mutant(s) neither killed nor in {EQUIVALENT.relative_to(ROOT)}: "
              "add a test that kills each, or write it down there with the reason it is equivalent.")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
