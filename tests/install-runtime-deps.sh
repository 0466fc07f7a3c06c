#!/usr/bin/env bash
# Installs what the container runtime and image store tests need (idempotent):
# busybox-static (the test image), docker-registry (a local registry on 127.0.0.1 for pull tests),
# runc and crun (the benchmark's baselines), apache2-utils (`htpasswd -B` for the auth registry in the image pull tests), libseccomp-dev (libcontainer's seccomp support links it),
# nftables (pod networking, Services and NetworkPolicy tables), bind9-dnsutils (dig against cluster DNS),
# iperf3 (pod-to-pod and pod-to-Service throughput), dnsperf (cluster DNS benchmark), iproute2 (`ip netns` for the
# network namespaces node clusters run in).
set -euo pipefail
pkgs=(busybox-static docker-registry runc crun apache2-utils libseccomp-dev nftables bind9-dnsutils iperf3 dnsperf iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's package starts a system service on :5000; the tests run their own instance.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
