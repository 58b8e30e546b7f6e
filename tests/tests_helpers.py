"""Helpers shared by the search and tracking tests."""
import json
from pathlib import Path

from tuning import search

TINY = ["--dataset", "digits", "--model", "test", "--verbose", "0", "--cpus-per-trial", "1"]


def run_search_cli(tmp_path, *argv):
    """Run tuning/search.py in this process (on the session's Ray); returns (trial rows, printed output)."""
    parser = search.build_parser()
    args = parser.parse_args([*TINY, "--storage-path", str(tmp_path), *argv])
    search.validate(args, parser)
    outcome = search.run(args)
    return outcome.df, search.render(outcome)


def trial_results(exp_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, read from Ray's result.json files."""
    out = {}
    for f in Path(exp_dir).glob("*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines:
            out[lines[0]["trial_id"]] = lines
    return out
