#!/usr/bin/env bash
# Set up a fresh machine for hilprune: Debian packages, then a virtual environment
# with every Python dependency pinned by constraints.txt. Idempotent and quick
# when everything is already there. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

# openssh-server: the farm tests' loopback boards; dataset-fashion-mnist: the default data;
# gcc/g++-aarch64-linux-gnu: linking rpi4/rpi5/jetson artifacts (DESIGN.md §4).
DEB_PACKAGES="openssh-server dataset-fashion-mnist gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"
missing=""
for p in $DEB_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.hilprune-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing Python packages into $VENV (pinned by constraints.txt)"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch==2.13.0 is the CPU build; the constraints keep pip from pulling a CUDA build.
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[test]"
  touch "$stamp"
fi
