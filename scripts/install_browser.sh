#!/usr/bin/env bash
# Install Debian's headless browser for the web-page test (tests/test_serve_search.py): chromium
# and chromium-driver (the matching chromedriver). Idempotent: does nothing when both are present.
# Needs root (or sudo) and apt-get; exit codes: 0 installed or already present, 3 no apt-get or no
# root, anything else: apt-get's own failure (e.g. no network).
set -euo pipefail

have_browser() {
  command -v chromedriver >/dev/null 2>&1 &&
    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
}

if have_browser; then
  echo "install_browser.sh: chromium and chromedriver already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: apt-get not found; install chromium and chromium-driver by hand" >&2
  exit 3
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install_browser.sh: not root and no password-less sudo; run as root:" \
      "apt-get install -y chromium chromium-driver" >&2
    exit 3
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# Wait up to 10 minutes for another apt/dpkg run to release its lock instead of failing at once.
LOCK=(-o DPkg::Lock::Timeout=600)
echo "install_browser.sh: apt-get update; apt-get install -y chromium chromium-driver"
"${SUDO[@]}" apt-get "${LOCK[@]}" update -q
"${SUDO[@]}" apt-get "${LOCK[@]}" install -y -q --no-install-recommends chromium chromium-driver
have_browser
echo "install_browser.sh: installed $(chromedriver --version | head -n 1)"
