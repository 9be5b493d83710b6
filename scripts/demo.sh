#!/usr/bin/env bash
# podtap's main job on one machine, from a fresh clone (as root): install what is needed, build,
# then bring up a local lab, tap the pods of namespace `shop`, drive traffic between pods on the
# same node and across nodes, write podtap-demo.pcapng and print a summary. Extra arguments go
# to `podtap demo` (see `podtap demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p podtap
exec ./target/release/podtap demo "$@"
