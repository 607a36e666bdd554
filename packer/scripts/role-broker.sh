#!/usr/bin/env bash
# broker: mosquitto from Debian. cloud-init (roles/broker/cloud-init.yaml) writes its
# configuration and password file, then enables and starts it; until then it stays off.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get -y -q install --no-install-recommends mosquitto mosquitto-clients
systemctl disable --now mosquitto.service
# The bridges to other brokers go here (tyrell-broker-bridge, at every start; may stay empty).
install -d -m 0755 /etc/mosquitto/tyrell.d
