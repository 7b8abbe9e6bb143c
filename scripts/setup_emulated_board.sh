#!/usr/bin/env bash
# Prepare the emulated aarch64 board for the opt-in test (DESIGN.md §4, issue 7):
# an arm64 Debian Python 3.11 unpacked into a sysroot, aarch64 wheels of numpy and
# the TVM runtime installed beside it, run by qemu-user (Debian qemu-user-static).
#   scripts/setup_emulated_board.sh [DIR]      (default .cache/emulated-aarch64)
# Then: HILPRUNE_EMULATED_BOARD=DIR .venv/bin/python -m pytest tests/devices/test_emulated_board.py
# Needs root for apt-get (only qemu-user-static is installed; arm64 packages are
# downloaded and unpacked, never installed). ~12 MB of .debs, ~100 MB of wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$(realpath -m "${1:-.cache/emulated-aarch64}")"
VENV="${VENV:-.venv}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
command -v qemu-aarch64-static >/dev/null || {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user-static >/dev/null
}
mkdir -p "$DIR/debs" "$DIR/wheels"
APT_ARCH="-o APT::Architectures=amd64,arm64"   # arm64 indices for `download` only; dpkg is not changed
$SUDO apt-get $APT_ARCH update -qq
( cd "$DIR/debs" && apt-get $APT_ARCH download \
    python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libc6:arm64 zlib1g:arm64 \
    libexpat1:arm64 libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 \
    libgcc-s1:arm64 libstdc++6:arm64 libuuid1:arm64 libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 \
    libcrypt1:arm64 libdb5.3:arm64 libnsl2:arm64 libtirpc3:arm64 libgssapi-krb5-2:arm64 libkrb5-3:arm64 \
    libk5crypto3:arm64 libkrb5support0:arm64 libcom-err2:arm64 libkeyutils1:arm64 )
rm -rf "$DIR/sysroot" "$DIR/site"
mkdir -p "$DIR/sysroot"
for d in "$DIR"/debs/*.deb; do dpkg -x "$d" "$DIR/sysroot"; done
pin() { grep -i "^$1==" constraints.txt | head -1; }
"$VENV/bin/pip" install -q --target "$DIR/site" --platform manylinux_2_28_aarch64 --only-binary=:all: \
  --python-version 3.11 --implementation cp --no-deps \
  "$(pin apache-tvm)" "$(pin apache-tvm-ffi)" "$(pin numpy)" "$(pin ml_dtypes)" "$(pin typing_extensions)"
# runtime-only TVM (DESIGN.md §4): the daemon needs tvm.runtime, not the 240 MB compiler
rm -f "$DIR/site/tvm/lib/libtvm_compiler.so"
cat > "$DIR/python" <<PY
#!/bin/sh
# aarch64 Python 3.11 under qemu-user: the emulated board's interpreter
PYTHONPATH="$DIR/site" exec qemu-aarch64-static -L "$DIR/sysroot" "$DIR/sysroot/usr/bin/python3.11" "\$@"
PY
chmod +x "$DIR/python"
"$DIR/python" -c "import platform, numpy, tvm.runtime; print('emulated board ready:', platform.machine(), 'numpy', numpy.__version__, 'tvm', tvm.__version__)"
