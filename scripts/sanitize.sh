#!/usr/bin/env bash
# Builds the compiled kernels (csrc/) with AddressSanitizer and UndefinedBehaviorSanitizer
# and runs the native tests, the hostile-input tests and the differential fuzz
# (tests/test_native_fuzz.py, many examples, new ones each run) against that build.
#
#   scripts/sanitize.sh                    # from the repository root, in the dev environment
#   STN_JAX_FUZZ_EXAMPLES=1000 scripts/sanitize.sh
#   PYTHON=.venv/bin/python SANITIZE_DIR=/tmp/stn-asan scripts/sanitize.sh
#   SANITIZE_JOBS=2 scripts/sanitize.sh   # pytest-xdist workers (default 0: one process)
#
# The sanitized library goes to $SANITIZE_DIR (default: a fresh temporary directory), never
# over the package's own _bilinear_cpu*.so; the tests load it through
# STN_JAX_NATIVE_LIBRARY (stn_jax/_src/native.py). Python is not built with ASan, so
# libasan is preloaded (it must be the first library loaded), leak checking is off (the
# interpreter leaks by design), pytest captures only Python-level output (--capture=sys)
# so a report reaches stderr, which is kept in $OUT/*.log, and ASan writes log files; this
# script prints any report it finds there.
# A canary (an out-of-bounds read and a NaN-to-int cast in a tiny library built the same
# way) first proves that both sanitizers report under this Python host at all.
#
# With SANITIZE_JOBS, each xdist worker runs sanitized too (the environment is inherited);
# a report aborts its worker, which fails the run even where its text is lost.
# Exit status 0: no sanitizer report and every test passed. Needs g++ with libasan/libubsan.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
CXX="${CXX:-g++}"
OUT="${SANITIZE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/stn-jax-sanitize.XXXXXX")}"
mkdir -p "$OUT"
rm -f "$OUT"/asan.* "$OUT"/ubsan.* "$OUT"/*.log

INCLUDE="$("$PYTHON" -c 'import jax; print(jax.ffi.include_dir())')"
# -fsanitize=undefined leaves out float-cast-overflow in GCC: add it (an out-of-range or
# NaN float to int32 cast is undefined, and the kernels cast coordinates). The math flags
# are the release build's (setup.py), so the same code is checked.
FLAGS=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fPIC -shared
  -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all
  -fno-trapping-math -fno-math-errno -ffp-contract=off)

# Rebuilt only when csrc/ is newer than the build in $OUT (minutes on a busy machine).
stale=0
for source in "$ROOT"/csrc/*.cc "$ROOT"/csrc/*.h "$ROOT"/csrc/*.inc; do
  if [ -z "$(find "$OUT/_bilinear_cpu.so" -newer "$source" 2>/dev/null)" ]; then stale=1; fi
done
if [ "$stale" -eq 1 ]; then
  echo "== building $OUT/_bilinear_cpu.so with ASan + UBSan"
  "$CXX" "${FLAGS[@]}" -I"$INCLUDE" "$ROOT"/csrc/*.cc -o "$OUT/_bilinear_cpu.so.tmp"
  mv "$OUT/_bilinear_cpu.so.tmp" "$OUT/_bilinear_cpu.so"
else
  echo "== reusing $OUT/_bilinear_cpu.so (newer than csrc/)"
fi

# libstdc++ is preloaded too: Python does not link it, and ASan's __cxa_throw interceptor
# fails its CHECK when the C++ runtime arrives later (jaxlib throws and catches inside).
LIBASAN="$("$CXX" -print-file-name=libasan.so)"
LIBSTDCXX="$("$CXX" -print-file-name=libstdc++.so)"
run_sanitized() {
  LD_PRELOAD="$LIBASAN $LIBSTDCXX" JAX_PLATFORMS=cpu \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$OUT/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$OUT/ubsan" \
    STN_JAX_NATIVE_LIBRARY="$OUT/_bilinear_cpu.so" \
    "$@"
}

# Reports: ASan's log files, and UBSan's lines in the captured stderr (UBSan loaded beside
# ASan writes to stderr whatever log_path says). Returns 1 if there is any.
PATTERN='runtime error:|ERROR: AddressSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer'
report() {
  local found=0
  for f in "$OUT"/asan.* "$OUT"/ubsan.*; do
    [ -e "$f" ] || continue
    found=1
    echo "---- sanitizer report $f"
    cat "$f"
  done
  for f in "$OUT"/*.log; do
    [ -e "$f" ] || continue
    if grep -Eq "$PATTERN" "$f"; then
      found=1
      echo "---- sanitizer report in $f"
      grep -E -A 30 "$PATTERN" "$f" | head -200
    fi
  done
  return $found
}

echo "== canary: both sanitizers must report a planted bug"
cat > "$OUT/canary.cc" <<'EOF'
#include <cstdint>
extern "C" int oob(int i) { int* a = new int[4](); int r = a[i]; delete[] a; return r; }
extern "C" int32_t cast(double x) { return static_cast<int32_t>(x); }
EOF
"$CXX" "${FLAGS[@]}" "$OUT/canary.cc" -o "$OUT/canary.so"
for call in "oob(4)" "cast(ctypes.c_double(float('nan')))"; do
  if run_sanitized "$PYTHON" -c "import ctypes; ctypes.CDLL('$OUT/canary.so').$call" \
    2> "$OUT/canary.log"; then
    echo "FAIL: the canary $call ran without a sanitizer stopping it"; exit 1
  fi
  if report > /dev/null; then
    echo "FAIL: the canary $call left no sanitizer report in $OUT"; exit 1
  fi
  echo "canary $call: reported"
  rm -f "$OUT"/asan.* "$OUT"/ubsan.* "$OUT"/canary.log
done

echo "== tests against the sanitized kernels"
cd "$ROOT"
# SANITIZE_TESTS (pytest arguments) replaces the default selection, e.g. for a quick run:
#   SANITIZE_TESTS="tests/test_native_fuzz.py" scripts/sanitize.sh
DEFAULT_TESTS="tests/test_sanitizers.py
  tests/test_native.py tests/test_native_volumes.py tests/test_native_fuzz.py
  tests/test_hostile_inputs.py tests/test_sharded_kernels.py
  tests/test_sampling.py::test_nan_coordinates_read_zero_in_every_mode_with_zero_gradient
  tests/test_sampling.py::test_infinite_and_huge_coordinates
  tests/test_sampling.py::test_empty_image_and_empty_grid
  tests/test_volumes.py::test_nan_inf_and_huge_coordinates
  tests/test_volumes.py::test_zero_size_axes_and_empty_grids"
read -r -a TESTS <<< "$(echo ${SANITIZE_TESTS:-$DEFAULT_TESTS})"
status=0
STN_JAX_FUZZ_EXAMPLES="${STN_JAX_FUZZ_EXAMPLES:-300}" STN_JAX_FUZZ_RANDOM=1 \
  run_sanitized "$PYTHON" -m pytest -n "${SANITIZE_JOBS:-0}" -q -p no:cacheprovider -o addopts="-ra" \
  --capture=sys "${TESTS[@]}" 2> >(tee "$OUT/tests.log" >&2) || status=$?
wait  # for tee

if ! report; then
  echo "FAIL: sanitizer reports above"; exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "FAIL: tests failed (exit $status) with no sanitizer report"; exit "$status"
fi
echo "OK: no sanitizer report, every test passed ($OUT)"
