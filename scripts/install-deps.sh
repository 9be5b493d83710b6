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
  # TLS and L7 applications the tests run inside pods (testkit's apps): servers and load tools
  nginx nghttp2-server nghttp2-client wrk openssl curl python3 python3-grpcio
  # a test server linked statically against OpenSSL (testkit's StaticTlsServer)
  gcc libc6-dev libssl-dev
  # DNS server and client for the DNS-over-UDP/TCP tests (dnsmasq-base: the binary, no service)
  dnsmasq-base bind9-dnsutils
  # packet loss and reordering for the L7 tests (this kernel has no sch_netem: iptables NFQUEUE)
  iptables
  # a Python venv for the PyPI tools below
  python3-venv
)

# From PyPI, in their own venv: kubernetes-validate checks the install manifests offline
# against the official Kubernetes schemas (the tests call it at this path).
TOOLS_VENV=/opt/podtap-tools
KUBERNETES_VALIDATE=1.37.0

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
  # Packages like nginx start a system service on install; the tests run their own servers
  # inside namespaces and want none on the host. A policy-rc.d answering 101 ("action
  # forbidden") makes invoke-rc.d and deb-systemd-invoke skip the start. Keep one that exists.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by podtap install-deps.sh for the duration of the install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The policy covers invoke-rc.d; also make sure a freshly installed nginx is neither running
  # nor enabled at boot (the tests run their own nginx inside namespaces, never on port 80).
  if [[ " ${missing[*]} " == *" nginx "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now nginx >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/nginx ]; then
      /etc/init.d/nginx stop >/dev/null 2>&1 || true
      update-rc.d nginx disable >/dev/null 2>&1 || true
    fi
  fi
fi

if ! "$TOOLS_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE"; then
  echo "install-deps.sh: installing kubernetes-validate $KUBERNETES_VALIDATE in $TOOLS_VENV"
  /usr/bin/python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE"
fi
