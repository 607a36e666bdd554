#!/usr/bin/env bash
# router: the `router` program; its unit and configuration come from roles/router/cloud-init.yaml.
set -euo pipefail
. /tmp/tyrell/install-binary.sh
install_binary router
