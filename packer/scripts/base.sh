#!/usr/bin/env bash
# Every role, first: a patched Debian with the AWS CLI (boxes read their secrets from
# SSM at boot) and the SSM agent (Session Manager). Runs as root on the build instance.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

echo "tyrell: base provisioning for role ${TYRELL_ROLE:?} ${TYRELL_VERSION:?}"

# cloud-init of the base image may still be writing apt sources.
# Bounded: where cloud-init never ran (a chroot, a box without a datasource) --wait
# waits forever.
timeout 600 cloud-init status --wait >/dev/null 2>&1 || echo "base.sh: cloud-init not done after 600 s (or failed); going on" >&2

apt-get update -q
apt-get -y -q -o Dpkg::Options::=--force-confold upgrade
apt-get -y -q install --no-install-recommends \
  awscli ca-certificates curl gnupg jq

# Session Manager needs Amazon's SSM agent, which Debian does not package: install it
# from Amazon's regional bucket (over HTTPS) unless the base image already has it.
if ! dpkg-query -W -f='${Status}' amazon-ssm-agent 2>/dev/null | grep -q 'install ok installed'; then
  region=${TYRELL_REGION:?}
  deb=$(mktemp --suffix=.deb)
  curl -sfSL -o "$deb" \
    "https://s3.${region}.amazonaws.com/amazon-ssm-${region}/latest/debian_amd64/amazon-ssm-agent.deb"
  dpkg -i "$deb"
  rm -f "$deb"
fi
systemctl enable amazon-ssm-agent.service

# The tyrell programs read /etc/tyrell/<program>.env, written by cloud-init.
install -d -m 0755 /etc/tyrell
