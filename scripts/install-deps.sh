#!/usr/bin/env bash
# Installs what PVC's build, tests, lab and demo need on a Debian machine.
# Used by `make deps` (and so by `make test` and `make demo`) and by .ci/run.
# Idempotent: it installs only packages that are missing.
set -euo pipefail

# Debian packages: the network lab and the real third-party components it runs.
PACKAGES=(
  iproute2 iptables nftables tcpdump conntrack procps psmisc
  miniupnpd miniupnpc stun-server
  netpipe-tcp iperf3 iputils-ping dnsutils wireguard-tools
  slurmctld slurmd slurm-client munge ncbi-blast+
  ca-certificates git make gcc
)

need_go="1.26"

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # miniupnpd's package must not start a daemon on the real host.
  echo "miniupnpd miniupnpd/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go: the machine image ships it at /usr/local/go (Debian's golang is too old).
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
  echo "install-deps: Go $need_go or newer is needed (expected at /usr/local/go/bin/go)" >&2
  exit 1
fi
have=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need_go" "$have" | sort -V | head -1)" != "$need_go" ]; then
  echo "install-deps: Go $need_go or newer is needed, found $have" >&2
  exit 1
fi
go mod download
echo "install-deps: ok (go $have, ${#PACKAGES[@]} Debian packages present)"
