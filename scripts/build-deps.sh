#!/usr/bin/env bash
# Installs what the release build needs beyond Rust and gcc, if missing: cmake and nasm, which
# build libjpeg-turbo (with its SIMD code) from the source bundled in the turbojpeg-sys crate.
# Debian's packages; run as root or with sudo. serve.sh and test.sh call this.
set -euo pipefail
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "== installing ${missing[*]} (Debian packages, to build libjpeg-turbo)" >&2
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
