#!/usr/bin/env bash
# CI smoke for the fuzz targets: build them all, then run each one from its committed
# seeds (fuzz/seeds/<target>/) for an equal share of a small time budget. Fails if a
# target does not build, or if any run panics, fails an assertion, crashes or hangs.
# It finds little that is new in a few seconds; what it proves is that every target
# still builds, that every committed seed (reproducers of past findings included)
# still passes, and that the parsers survive the first mutations of them.
#
#   fuzz/smoke.sh                        # about 60 s of fuzzing in all
#   FUZZ_SMOKE_BUDGET=150 fuzz/smoke.sh  # about 150 s
#
# Built without AddressSanitizer (`--sanitizer none`), unlike the longer runs of
# fuzz/README.md: pushgate has no unsafe code, the targets' checks are assertions
# that panic either way, and the build takes a quarter less time. Needs cargo and a
# C++ compiler (libFuzzer is built from source). Installs cargo-fuzz when it is
# missing. libFuzzer wants nightly features, so it sets RUSTC_BOOTSTRAP=1 on the
# stable toolchain. Builds into CARGO_TARGET_DIR when set, else fuzz/target. Seeds
# stay as committed: new inputs go to a temporary corpus, removed at the end; a
# failing input is kept in fuzz/artifacts/<target>/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"

budget="${FUZZ_SMOKE_BUDGET:-60}"
# What both commands build with; `cargo fuzz run` rebuilds if they differ.
build=(--sanitizer none)
# An input that takes longer than this is a hang (libFuzzer's default is 20 minutes).
per_input_timeout=10

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi

started=$SECONDS
echo "== cargo fuzz build (every target)"
cargo fuzz build "${build[@]}"
echo "built in $((SECONDS - started)) s"

mapfile -t targets < <(cargo fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi
# A run takes about 2 s more than its -max_total_time (cargo's check that the
# target is built, libFuzzer's start and its whole-second clock).
each=$((budget / ${#targets[@]} - 2))
[ "$each" -ge 1 ] || each=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
fuzz_started=$SECONDS
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  log="$work/$t.log"
  # The first corpus directory receives new inputs: the temporary one, never seeds/.
  # `timeout` is a backstop in case libFuzzer itself stops answering.
  if timeout --kill-after=10 $((each + per_input_timeout + 60)) \
    cargo fuzz run "${build[@]}" "$t" "$work/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$each" -timeout="$per_input_timeout" >"$log" 2>&1; then
    # libFuzzer's last line: "Done N runs in S second(s)".
    echo "ok   $t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
  else
    rc=$?
    echo "FAIL $t (exit $rc):"
    # Why (a panic, or libFuzzer's own report: crash, timeout, out of memory) and
    # the input; else the end of the log (a build error, say).
    why='panicked at|ERROR: libFuzzer'
    if grep -q -E "$why" "$log"; then
      grep -m 1 -A 6 -E "$why" "$log"
      grep -E 'Test unit written to' "$log"
    else
      tail -n 40 "$log"
    fi | sed 's/^/    /'
    failed+=("$t")
  fi
done
echo "fuzzed ${#targets[@]} targets, ${each} s each, in $((SECONDS - fuzz_started)) s"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz smoke failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
