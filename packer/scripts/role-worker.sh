#!/usr/bin/env bash
# worker: the `tyrell-worker` program; its unit and configuration come from roles/worker/cloud-init.yaml.
set -euo pipefail
. /tmp/tyrell/install-binary.sh
install_binary tyrell-worker
