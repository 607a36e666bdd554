#!/usr/bin/env bash
# Every role, last: record what was built, clean up, and leave nothing instance-specific
# in the image (cloud-init runs again on the first boot of every box).
set -euo pipefail

cat > /etc/tyrell/ami-release <<INFO
role=${TYRELL_ROLE:?}
version=${TYRELL_VERSION:?}
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
INFO

rm -rf /tmp/tyrell
apt-get -y -q autoremove --purge
apt-get clean
rm -rf /var/lib/apt/lists/*

# First boot of each box regenerates these.
cloud-init clean --logs --seed
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
rm -f /root/.bash_history "/home/${SUDO_USER:-admin}/.bash_history"
