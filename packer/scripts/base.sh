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

# Scale-in drain for any role whose fleet has a termination lifecycle hook (role.toml
# `drain_seconds`): its cloud-init enables tyrell-drain@<its unit>. When Auto Scaling
# starts terminating the box, the hook holds it (Terminating:Wait) and the instance
# metadata says autoscaling/target-lifecycle-state = Terminated; the watcher then stops
# the unit, whose program delivers what it holds before it exits. No
# CompleteLifecycleAction: the hook times out into CONTINUE, so boxes need no Auto
# Scaling rights. (EC2 user guide, "Retrieve the target lifecycle state through
# instance metadata".)
cat > /usr/local/sbin/tyrell-drain <<'EOF'
#!/bin/sh
# tyrell-drain UNIT: stop UNIT when Auto Scaling terminates this box (IMDSv2 only).
unit=${1:?usage: tyrell-drain UNIT}
imds=http://169.254.169.254/latest
while sleep 5; do
  token=$(curl -fsS -X PUT "$imds/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60") || continue
  state=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/autoscaling/target-lifecycle-state") || continue
  if [ "$state" = Terminated ]; then
    echo "tyrell-drain: this box is terminating: stopping $unit (it delivers what it holds first)"
    systemctl stop "$unit"
    exit 0
  fi
done
EOF
chmod 0755 /usr/local/sbin/tyrell-drain
cat > /etc/systemd/system/tyrell-drain@.service <<'EOF'
[Unit]
Description=tyrell drain: stop %i when Auto Scaling terminates this box
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/tyrell-drain %i
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
