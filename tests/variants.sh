#!/usr/bin/env bash
# The test suite in variants that round, find data and draw examples differently, as
# another machine would (issue 24). A test that passes only on this machine's rounding,
# with FER-2013 beside it, or on one hypothesis draw fails here.
#
#   tests/variants.sh                      every variant, one after the other
#   tests/variants.sh no-data one-thread   the ones named
#   tests/variants.sh seeds -- -x          arguments after -- go to every pytest run
#   tests/variants.sh --list | --help
#
# Variants:
#   no-data      FER2013_DIR names a folder that does not exist (so ../shared/fer2013 is not
#                used either): every data test skips with its reason or takes its fallback
#   haswell      OPENBLAS_CORETYPE=Haswell      (AVX2 + FMA sgemm kernels)
#   sandybridge  OPENBLAS_CORETYPE=Sandybridge  (AVX without FMA: other kernels, other rounding)
#   one-thread   OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 (other summation orders, no races)
#   seeds        the property (hypothesis) and fuzz tests, three times, each with a fresh
#                random seed (HYPOTHESIS_PROFILE=random; the seed is printed, and
#                HYPOTHESIS_SEED=N with --hypothesis-seed=N repeats a run)
#
# Each variant prints its counts (passed, failed, skipped, time) and keeps its log in
# $VARIANTS_LOGS (default: a new folder under /tmp). The script exits 1 if any variant
# failed. An OPENBLAS_CORETYPE already set in the environment (for a CPU OpenBLAS
# misdetects, or to pin one kernel) is left as it is, except in the two variants whose
# point is to set it.
#
# Numba's on-disk cache: none of these settings changes what Numba compiles (thread
# counts are chosen at run time, OpenBLAS is not Numba's), so the variants share the
# usual cache. TINYCNN_NUMBA_PARALLEL does change it; a variant setting it would need its
# own NUMBA_CACHE_DIR (see tinycnn/backend.py).
#
# The whole suite takes about 8 minutes on a 2-core machine, so every variant takes
# about 40; CI (.ci/run) runs no-data beside the full run.
set -uo pipefail
cd "$(dirname "$0")/.."

ALL=(no-data haswell sandybridge one-thread seeds)
PROPERTY_TESTS=(tests/test_kernels.py tests/test_gradcheck.py tests/test_depthwise.py tests/test_winograd.py
                tests/test_fuzz.py)

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

variants=()
pytest_args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) [[ " ${ALL[*]} " == *" $1 "* ]] || { echo "variants.sh: unknown variant '$1' (one of: ${ALL[*]})" >&2; exit 2; }
       variants+=("$1") ;;
  esac
  shift
done
((${#variants[@]})) || variants=("${ALL[@]}")

LOGS="${VARIANTS_LOGS:-$(mktemp -d /tmp/tinycnn-variants.XXXXXX)}"
mkdir -p "$LOGS"
PYTEST=(python -m pytest -p no:cacheprovider)
# the variants that change rounding or data keep hypothesis' examples fixed (the ci
# profile), so that a failure there comes from the variant; seeds changes only the draw
PROFILE="${HYPOTHESIS_PROFILE:-ci}"
failed=()
summary=()

# counts NAME JUNIT-XML SECONDS RC: one line of counts from pytest's JUnit report
counts() {
  python - "$@" <<'EOF'
import sys
import xml.etree.ElementTree as ET
name, path, seconds, rc = sys.argv[1:]
try:
    suites = ET.parse(path).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    print(f"{name}: {passed} passed, {total['failures']} failed, {total['errors']} errors, "
          f"{total['skipped']} skipped in {int(seconds) // 60} min {int(seconds) % 60} s (pytest exit {rc})")
except (OSError, ET.ParseError) as e:
    print(f"{name}: no report ({e}); pytest exit {rc}")
EOF
}

# run NAME [VAR=VALUE ...] -- PYTEST-ARGS: one pytest run in the environment given
run() {
  local name=$1; shift
  local env=()
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  local log="$LOGS/$name.log" xml="$LOGS/$name.xml"
  echo "== $name: ${env[*]:-(environment as is)} pytest $* ${pytest_args[*]}"
  local start=$SECONDS
  env "${env[@]}" "${PYTEST[@]}" --junitxml="$xml" "$@" "${pytest_args[@]}" >"$log" 2>&1
  local rc=$?
  local line
  line=$(counts "$name" "$xml" $((SECONDS - start)) "$rc")
  echo "   $line   (log: $log)"
  summary+=("$line")
  if ((rc != 0)); then
    failed+=("$name")
    grep -E '^(FAILED|ERROR) ' "$log" | head -20 | sed 's/^/   /'
  fi
}

for variant in "${variants[@]}"; do
  case "$variant" in
    no-data)
      run no-data HYPOTHESIS_PROFILE="$PROFILE" FER2013_DIR="$LOGS/no-fer2013-here" -- ;;
    haswell|sandybridge)
      core=$([[ $variant == haswell ]] && echo Haswell || echo Sandybridge)
      # OpenBLAS falls back to its own detection on a name it does not know: check it took
      # (threadpoolctl tells; without it, say that it could not be checked)
      got=$(OPENBLAS_CORETYPE=$core python -c "import numpy, threadpoolctl; print(threadpoolctl.threadpool_info()[0].get('architecture'))" 2>/dev/null)
      if [[ -z "$got" ]]; then
        echo "   (threadpoolctl missing: cannot check that OpenBLAS runs its $core kernels)"
      elif [[ "$got" != "$core" ]]; then
        echo "== $variant: OpenBLAS runs '$got', not $core"
        summary+=("$variant: not run (OpenBLAS reports '$got')"); failed+=("$variant"); continue
      fi
      run "$variant" HYPOTHESIS_PROFILE="$PROFILE" OPENBLAS_CORETYPE="$core" -- ;;
    one-thread)
      run one-thread HYPOTHESIS_PROFILE="$PROFILE" OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 -- ;;
    seeds)
      for k in 1 2 3; do
        seed=$(python -c "import secrets; print(secrets.randbelow(2**32))")
        run "seeds-$k" HYPOTHESIS_PROFILE=random HYPOTHESIS_SEED="$seed" -- "${PROPERTY_TESTS[@]}" \
            --hypothesis-seed="$seed"
      done ;;
  esac
done

echo
echo "== variants (logs in $LOGS)"
printf '   %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "   FAILED: ${failed[*]}"
  exit 1
fi
