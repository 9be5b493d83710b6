#!/usr/bin/env bash
# Installs the system packages podtap needs to build (clang, libbpf headers) and to run
# its lab, tests and benchmarks (iproute2, tcpdump, tshark, iperf3, ...). Idempotent.
set -euo pipefail

PACKAGES=(
  # build: eBPF C programs; libpcap for tcpdump-style filter expressions in the broker
  clang llvm libbpf-dev linux-libc-dev bpftool libpcap-dev
  # lab and agent
  iproute2 ethtool procps
  # real peers the tests and benchmarks compare against
  tcpdump tshark iperf3 hping3 nfdump softflowd pmacct tcpreplay
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
