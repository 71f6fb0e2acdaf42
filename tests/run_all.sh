#!/usr/bin/env bash
# The project's one test command (README): the exported modules match the notebooks, every notebook runs as a
# test, pytest passes, and the package built from the sdist works from its wheel in a new virtual environment
# with only its run-time dependencies. Non-zero exit on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SECONDS=0

# Everything the suite puts in temporary folders (pytest's tmp_path, the notebooks' and torchrun's temp folders, the
# package build and its virtual environment) goes into one folder, measured and removed at the end, pass or fail.
work=$(mktemp -d "${TMPDIR:-/tmp}/tsai_cbs_tests.XXXXXX")
mkdir "$work/tmp"
export TMPDIR="$work/tmp"
finish() {
  rc=$?
  echo "== temporary files: $(du -sh "$work/tmp" 2>/dev/null | cut -f1) left by the tests, $(du -sh "$work" 2>/dev/null | cut -f1) in all; removed ($work)"
  rm -rf "$work"
  echo "== $( [ $rc -eq 0 ] && echo passed || echo FAILED ) in ${SECONDS} s"
  exit $rc
}
trap finish EXIT

# files in the repository (ignored ones included) before the tests: none may be added by them
untouched() { git status --porcelain --ignored --untracked-files=all | grep -v -E '__pycache__/|\.pyc$|^!! \.pytest_cache/|^!! \.hypothesis/|\.egg-info/|^!! \.venv/' | sort || true; }
before=$(untouched)

echo "== 1/4 exported modules match the notebooks"
nbdev-export
if ! git diff --exit-code --stat -- tsai_cbs; then
  echo "tsai_cbs/ differs from what the notebooks export: run nbdev-export and commit" >&2; exit 1
fi
untracked=$(git ls-files --others --exclude-standard -- tsai_cbs)
if [ -n "$untracked" ]; then echo "exported but not committed: $untracked" >&2; exit 1; fi

echo "== 2/4 notebooks (nbdev-test, 2 workers)"
python tests/run_notebooks.py --n-workers 2

echo "== 3/4 pytest"
MPLBACKEND=Agg python -m pytest -q -n 2 --durations=5 tests

echo "== 4/4 package: sdist, wheel built from it, installed with run-time dependencies only in a new environment"
python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
python tests/check_dist.py "$work/dist" "$work/build.log"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-compile "$work"/dist/*.whl
mkdir "$work/run"
(cd "$work/run" && MPLBACKEND=Agg "$work/venv/bin/python" "$repo/tests/wheel_smoke.py" --installed)

after=$(untouched)
added=$(comm -13 <(echo "$before") <(echo "$after"))
if [ -n "$added" ]; then echo "the tests left files in the repository:" >&2; echo "$added" >&2; exit 1; fi
