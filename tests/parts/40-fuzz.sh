#!/usr/bin/env bash
# Coverage-guided fuzzing, short mode: every target in fuzz/fuzz_targets (the
# wire decoder, the socket spec parser, the policy parser, the client's reply
# handling against a fake broker, sd_notify parsing and the upgrade state
# decoder) over the committed seed corpus. fuzz/run --long runs each for
# minutes by hand.
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
FUZZ_RUNS=${FUZZ_RUNS:-200000} bash fuzz/run
