#!/usr/bin/env bash
# The crash benchmark: a writer child process is SIGKILLed at random moments, the store is reopened,
# and every sample whose write was acknowledged as durable must be there. Default 200 cycles.
#
#   bench/scenarios/crash_cycles.sh [cycles]
set -euo pipefail
cd "$(dirname "$0")/../.."
TSDB_CRASH_CYCLES=${1:-200} cargo test --release --locked -p tsdb --test crash_recovery -- --nocapture
