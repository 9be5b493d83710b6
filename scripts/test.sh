#!/usr/bin/env bash
# The whole test suite, from a fresh clone (as root): installs what is needed, checks format and
# lints, runs every test (unit, real-kernel tap tests in lab namespaces, CLI tests), then checks
# that the suite left no namespace, hook or BPF program behind.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# rustls must have one crypto provider (ring): with aws-lc-rs in the graph too, tonic's server
# and kube's client cannot pick one and panic at run time, not at build time.
if cargo tree --locked -i aws-lc-rs >/dev/null 2>&1; then
  echo "test.sh: aws-lc-rs is in the dependency graph (keep rustls on ring only): cargo tree -i aws-lc-rs" >&2
  exit 1
fi
log=$(mktemp)
set +e
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# What the suite must not leave behind: test labs (pt-ta*, pt-tc*, pt-tl* + test pid), the
# test kit's app namespaces (pt-app*), tap programs or TLS probes.
left_ns=$(ip netns list | awk '{print $1}' | grep -E '^(pt-t[acl][a-z]*[0-9]+-|pt-app)' || true)
left_progs=$(bpftool prog show 2>/dev/null | grep -E 'name (tap_from_pod|tap_to_pod|tls_[a-z_]+)' || true)
if [ -n "$left_ns" ] || [ -n "$left_progs" ]; then
  echo "test.sh: the suite left things behind:" >&2
  [ -n "$left_ns" ] && echo "  namespaces: $left_ns" >&2
  [ -n "$left_progs" ] && echo "  BPF programs: $left_progs" >&2
  exit 1
fi
echo "test.sh: no namespace, BPF program or TLS probe of the suite remains"

# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"
