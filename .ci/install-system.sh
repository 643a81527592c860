#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing. Safe to re-run.
set -euo pipefail
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need+=(sox)
command -v flite >/dev/null 2>&1 || need+=(flite)  # the unseen engine of test_unseen_engine
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# DeepSpeed (dev extra) compiles its CPU collective on first use
command -v g++ >/dev/null 2>&1 || need+=(g++)
[ -f "/usr/include/python3.$(python3 -c 'import sys; print(sys.version_info.minor)')/Python.h" ] || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
