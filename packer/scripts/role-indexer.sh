#!/usr/bin/env bash
# indexer: the `indexer` program; its unit and configuration come from roles/indexer/cloud-init.yaml.
set -euo pipefail
. /tmp/tyrell/install-binary.sh
install_binary indexer
