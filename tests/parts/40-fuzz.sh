#!/usr/bin/env bash
# Coverage-guided fuzzing, short mode: the wire decoder and the socket spec
# parser (and the policy parser once it has a target) over the committed seed
# corpus. fuzz/run --long runs for minutes by hand.
set -euo pipefail
. "$(dirname "$0")/../lib/env.sh"
cd "$ROOT"
FUZZ_RUNS=${FUZZ_RUNS:-200000} bash fuzz/run
