#!/usr/bin/env bash
# The project's one test command (README): the exported modules match the notebooks, every notebook runs as a
# test, pytest passes, and the package built from the sdist works from its wheel in a new virtual environment
# with only its run-time dependencies. Every stage runs (one run shows every problem); non-zero exit if any failed.
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
failed=()
finish() {
  rc=$?
  echo "== temporary files: $(du -sh "$work/tmp" 2>/dev/null | cut -f1) left by the tests, $(du -sh "$work" 2>/dev/null | cut -f1) in all; removed ($work)"
  rm -rf "$work"
  if [ $rc -eq 0 ] && [ ${#failed[@]} -eq 0 ]; then echo "== passed in ${SECONDS} s"
  else echo "== FAILED in ${SECONDS} s: ${failed[*]:-interrupted}" >&2; [ $rc -ne 0 ] || rc=1; fi
  exit $rc
}
trap finish EXIT

stage() {  # stage NAME FUNCTION: run it (stopping at its first failing command), note a failure, go on
  echo "== $1"
  local t=$SECONDS rc
  set +e; ( set -e; "$2" ); rc=$?; set -e
  if [ $rc -ne 0 ]; then failed+=("$1"); echo "!! $1: FAILED after $((SECONDS - t)) s" >&2; fi
}

# files in the repository (ignored ones included) before the tests: none may be added by them
repo_files() { git status --porcelain --ignored --untracked-files=all | grep -v -E '__pycache__/|\.pyc$|\.egg-info/|^!! \.venv/' | sort || true; }
before=$(repo_files)

exports_match() {
  nbdev-export
  if ! git diff --exit-code --stat -- tsai_cbs; then
    echo "tsai_cbs/ differs from what the notebooks export: run nbdev-export and commit" >&2; return 1
  fi
  local untracked; untracked=$(git ls-files --others --exclude-standard -- tsai_cbs)
  if [ -n "$untracked" ]; then echo "exported but not committed: $untracked" >&2; return 1; fi
}
notebooks() { python tests/run_notebooks.py --n-workers 2; }
unit_tests() { MPLBACKEND=Agg python -m pytest -q -n 2 -p no:cacheprovider --durations=5 tests; }  # no .pytest_cache/ in the repository
package() {
  python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { cat "$work/build.log"; return 1; }
  python tests/check_dist.py "$work/dist" "$work/build.log"
  python -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q --no-compile "$work"/dist/*.whl
  mkdir "$work/run"
  cd "$work/run" && MPLBACKEND=Agg "$work/venv/bin/python" "$repo/tests/wheel_smoke.py" --installed
}
nothing_left() {
  local added; added=$(comm -13 <(echo "$before") <(repo_files))
  if [ -n "$added" ]; then echo "the tests left files in the repository:" >&2; echo "$added" >&2; return 1; fi
}

stage "1/5 exported modules match the notebooks" exports_match
stage "2/5 notebooks (as nbdev-test, 2 workers)" notebooks
stage "3/5 pytest" unit_tests
stage "4/5 package: sdist, wheel built from it, installed with run-time dependencies only in a new environment" package
stage "5/5 nothing left in the repository" nothing_left
