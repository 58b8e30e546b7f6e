#!/usr/bin/env bash
# README's two commands on a machine with only Python: a fresh clone of this repository's HEAD in an empty
# folder, whose .venv sees none of this machine's installed packages (VENV_FLAGS=), so everything the
# project needs is installed from the package registry, as on a new machine. Prints how long each took.
#
#   bash benchmarks/fresh_machine.sh            # keeps the folder it made; delete it afterwards
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/mixtune-fresh-XXXXXX)
git clone -q "$repo" "$work/mixtune"
cd "$work/mixtune"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/mixtune"
for target in run test; do
    start=$(date +%s)
    make VENV_FLAGS= "$target" > "$work/make-$target.log" 2>&1 || { tail -40 "$work/make-$target.log"; exit 1; }
    echo "make $target: $(( $(date +%s) - start )) s (log: $work/make-$target.log)"
done
tail -5 "$work/make-test.log"
