#!/usr/bin/env bash
# Install the Debian packages the full test matrix needs, when we are root and they are missing.
# Idempotent and quick when everything is already there; never required for `make run`.
set -euo pipefail

packages=(
  strace            # behaviour tracing in tests
  util-linux        # runuser, used by the unprivileged-user tests
  passwd            # useradd
  libseccomp2       # pyseccomp loads it
  procps            # kill(1), used by cleanup
  bubblewrap        # a second bwrap (the wheel's is preferred when newer)
  iproute2          # ip: the sinkhole network's routes (--network sinkhole)
  nftables          # nft: the sinkhole's TPROXY rule
)
if [ -f scripts/system-packages.txt ]; then
  while read -r name _; do
    case "$name" in ''|'#'*) ;; *) packages+=("$name") ;; esac
  done < scripts/system-packages.txt
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: not root; skipping apt (backends that need packages will skip with their reason)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: no apt-get on this system; skipping"
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
