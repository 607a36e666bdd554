#!/usr/bin/env bash
# metrics: InfluxDB 1.x from Debian and Grafana OSS from Grafana's signed APT repository.
# cloud-init (roles/metrics/cloud-init.yaml) configures, enables and starts both.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Grafana's APT signing key; a key with another fingerprint fails the build (a key
# rotation is for a human to check, not for the build to accept).
GRAFANA_KEY_URL=https://apt.grafana.com/gpg.key
GRAFANA_KEY_FPR=B53AE77BADB630A683046005963FA27710458545

apt-get -y -q install --no-install-recommends influxdb influxdb-client

tmp=$(mktemp -d)
curl -sfSL -o "$tmp/grafana.asc" "$GRAFANA_KEY_URL"
fprs=$(gpg --batch --with-colons --show-keys "$tmp/grafana.asc" | awk -F: '$1 == "fpr" {print $10}')
if ! grep -qx "$GRAFANA_KEY_FPR" <<<"$fprs"; then
  echo "tyrell: Grafana key fingerprint mismatch: got $fprs" >&2
  exit 1
fi
install -d -m 0755 /etc/apt/keyrings
gpg --batch --dearmor < "$tmp/grafana.asc" > /etc/apt/keyrings/grafana.gpg
rm -rf "$tmp"
echo "deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main" \
  > /etc/apt/sources.list.d/grafana.list
apt-get update -q
apt-get -y -q install --no-install-recommends grafana

systemctl disable --now influxdb.service grafana-server.service || true
