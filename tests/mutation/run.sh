#!/usr/bin/env bash
# Mutation testing of one module with mutmut 3 (pip install -e ".[mutation]"):
#
#     tests/mutation/run.sh fer_models/metrics.py       # any module listed in modules.txt
#     tests/mutation/run.sh fer_models/metrics.py NAME...   # only these mutants (mutmut's names)
#
# mutmut rewrites each function of the module into its mutants (one small change each:
# an operator, a constant, an argument dropped) and runs the module's targeted tests,
# listed beside it in modules.txt, against every mutant. A mutant that no test fails on
# "survived": kill it with a test, or list it in equivalent.md with the reason.
#
# The run happens in a copy of the working tree (under $MUTATION_DIR, default
# /tmp/tinycnn-mutation), so the tree itself is never touched and runs of two modules
# do not share mutmut's cache. Afterwards, in that copy: `mutmut results` lists the
# survivors, `mutmut show NAME` prints one as a diff, `mutmut browse` browses them.
# Decorated functions (@njit kernels, @property) are not mutated: mutmut skips them.
#
# MUTATION_BASELINE=1 leaves out the tests written for mutation testing
# (tests/test_mutants_*.py): the score before them. MUTATION_JOBS=N runs N mutants at once.
# Given mutant names (the survivors of an earlier run), only those run: a quick check that
# new tests kill them, quicker still with MUTATION_TESTS="the new test files" in place of
# the module's list.
set -euo pipefail

main() {
module=${1:?usage: tests/mutation/run.sh MODULE [MUTANT...] (MODULE one of those in tests/mutation/modules.txt)}
shift
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
tests=$(awk -v m="$module" '$1 == m { $1 = ""; print }' "$root/tests/mutation/modules.txt")
tests=${MUTATION_TESTS:-$tests}
if ! command -v mutmut > /dev/null; then
    echo "run.sh: mutmut not found; pip install -e \".[mutation]\" (in the project's environment)" >&2
    exit 2
fi
if [ -z "$tests" ]; then
    echo "run.sh: $module is not in tests/mutation/modules.txt; add it with its targeted tests" >&2
    exit 2
fi

work=${MUTATION_DIR:-${TMPDIR:-/tmp}/tinycnn-mutation}/${module//\//_}
rm -rf "$work"
mkdir -p "$work"
(cd "$root" && git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) |
    tar -xf - -C "$work"

# mutmut reads its configuration from pyproject.toml: the copy's gets this module's.
{
    echo
    echo "[tool.mutmut]"
    echo 'source_paths = ["tinycnn", "fer_models"]'
    echo "only_mutate = [\"$module\"]"
    echo 'also_copy = ["fer_programs", "train.py", "webcam.py", "train_distributed.py", "bench", "notebooks"]'
    echo 'pytest_add_cli_args = ["-o", "addopts=", "-p", "no:cacheprovider"]'
    # a mutant that loops forever (i = 1 in a while loop) is stopped after twice its
    # tests' time in the first run (Numba's compilation included) plus 30 s, not 15 times
    echo 'timeout_multiplier = 2.0'
    # every worker is forked from a server that has only collected the tests, not run them.
    # Forked from mutmut's main process (which has), workers shared tqdm's lock, a
    # multiprocessing RLock: a semaphore in shared memory. A mutant that made a progress bar
    # raise while drawing (tqdm's refresh() takes the lock without try/finally) left it taken
    # as its worker exited, and every later worker that made a bar, even a disabled one,
    # waited on it forever: ensemble.py's soft_labels mutants after unit=None timed out.
    echo 'process_isolation = "forkserver"'
    echo 'timeout_constant = 30.0'
    printf 'pytest_add_cli_args_test_selection = ['
    sep=""
    for t in $tests; do
        # options pass as they are; a test file not written yet is left out (a first run)
        if [ -n "${MUTATION_BASELINE:-}" ] && [[ $t == tests/test_mutants_* ]]; then continue; fi
        if [[ $t == -* ]] || [ -e "$work/${t%%::*}" ]; then printf '%s"%s"' "$sep" "$t"; sep=", "; fi
    done
    echo "]"
} >> "$work/pyproject.toml"

# the tests find FER-2013 beside the project; the copy is elsewhere
if [ -z "${FER2013_DIR:-}" ] && [ -d "$root/../shared/fer2013" ]; then
    export FER2013_DIR=$root/../shared/fer2013
fi
# mutmut forks a process per mutant from one that has imported Numba, and Numba's OpenMP
# kernels cannot run after a fork (tinycnn would fall back to the NumPy kernels): the
# compiled kernels run serial here, so the tests still run both backends (and the one
# test that needs two Numba threads is skipped).
export TINYCNN_NUMBA_PARALLEL=0
# the same hypothesis examples in the clean run and under every mutant (hypothesis_profiles.py):
# a mutant is killed by the code, not by the draw
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
cd "$work"
start=$(date +%s)
nice -n 19 mutmut run --max-children "${MUTATION_JOBS:-1}" "$@"
echo "mutmut: $module against$tests, $(( $(date +%s) - start )) s"
mutmut results --all true | awk '{ print $NF }' | sort | uniq -c
echo "not killed (mutmut show NAME, in $work):"
mutmut results
}

main "$@"   # the whole script is read before it runs: editing it mid-run is safe
