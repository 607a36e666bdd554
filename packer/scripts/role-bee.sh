#!/usr/bin/env bash
# bee: the `bee` program; its unit and configuration come from roles/bee/cloud-init.yaml.
set -euo pipefail
. /tmp/tyrell/install-binary.sh
install_binary bee
