#!/usr/bin/env bash
# The project's one test command (README): the exported modules match the notebooks,
# every notebook runs as a test, and pytest passes. Non-zero exit on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "== 1/3 exported modules match the notebooks"
nbdev-export
if ! git diff --exit-code --stat -- tsai_cbs; then
  echo "tsai_cbs/ differs from what the notebooks export: run nbdev-export and commit" >&2; exit 1
fi
untracked=$(git ls-files --others --exclude-standard -- tsai_cbs)
if [ -n "$untracked" ]; then echo "exported but not committed: $untracked" >&2; exit 1; fi

echo "== 2/3 notebooks"
nbdev-test --n-workers 2

echo "== 3/3 pytest"
MPLBACKEND=Agg python -m pytest -q -n 2 tests
