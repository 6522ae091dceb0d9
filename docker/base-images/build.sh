#!/usr/bin/env bash
# Make local stand-ins for the FROM images of docker/Dockerfile.{cpu,gpu,train} out of Debian's
# packages, for machines with a Docker engine but no registry to pull from (our CI, air-gapped
# hosts). The Dockerfiles stay what a user builds against Docker Hub; a stand-in is chosen with
# `--build-arg` only (see --build-args).
#
#   build.sh [--force] [IMAGE...]        IMAGE: debian python rust cuda (default: all four)
#   build.sh --build-args cpu|gpu|train  print the KEY=VALUE build arguments for that Dockerfile
#   build.sh --tag IMAGE                 print the stand-in's tag
#
#   debian  maskserve-base/debian:12-slim        debootstrap --variant=minbase bookworm, imported
#                                                (stands in for debian:12.13-slim)
#   python  maskserve-base/python:3-bookworm     + Debian's python3, venv and pip
#                                                (for python:3.12.13-slim-bookworm; Python 3.11)
#   rust    maskserve-base/rust:1.95.0-bookworm  + gcc and this machine's rustup toolchain, which
#                                                must be 1.95.0 (for rust:1.95.0-slim-bookworm)
#   cuda    maskserve-base/cuda:13.0-cudnn9      + CUDA 13.0 and cuDNN 9 user-space libraries from
#                                                PyPI's nvidia-* wheels in /usr/local/cuda/lib64
#                                                (for nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04)
#
# An image is rebuilt only when its recipe (its make_ function, the pins, the toolchain's version)
# changes or with --force; the recipe's hash is the image label org.maskserve.base.recipe.
# This machine's local CAs (/usr/local/share/ca-certificates, e.g. a TLS-intercepting proxy's) are
# trusted in the stand-ins as they are here, and pip uses the system store (PIP_CERT), so builds
# reach the package registries the way this machine does.
# Needs root (debootstrap), debootstrap, docker and python3 with pip. MASKSERVE_CACHE (default
# ~/.cache/maskserve) keeps the downloaded wheels; DEBIAN_MIRROR overrides deb.debian.org.
set -euo pipefail

SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
RUST_VERSION=1.95.0
# CUDA 13.0 Update 2 and a cuDNN 9 for CUDA 13, the libraries ONNX Runtime's CUDA provider loads.
CUDA_WHEELS=(
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.1.0.3
  nvidia-cufft==12.0.0.61
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cudnn-cu13==9.14.0.64
)
CACHE="${MASKSERVE_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/maskserve}/base-images"
LABEL=org.maskserve.base.recipe
export DOCKER_BUILDKIT=0

declare -A TAG=(
  [debian]=maskserve-base/debian:12-slim
  [python]=maskserve-base/python:3-bookworm
  [rust]=maskserve-base/rust:${RUST_VERSION}-bookworm
  [cuda]=maskserve-base/cuda:13.0-cudnn9
)

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

build_args() {
  case "$1" in
    cpu) printf '%s\n' "RUNTIME_IMAGE=${TAG[debian]}" "PYTHON_IMAGE=${TAG[python]}" "RUST_IMAGE=${TAG[rust]}" ;;
    gpu) printf '%s\n' "RUNTIME_IMAGE=${TAG[cuda]}" "PYTHON_IMAGE=${TAG[python]}" "RUST_IMAGE=${TAG[rust]}" ;;
    train) printf '%s\n' "PYTHON_IMAGE=${TAG[python]}" ;;
    *) echo "build.sh: --build-args takes cpu, gpu or train, not '$1'" >&2; exit 2 ;;
  esac
}

recipe() {
  # What the image is made of; a change to any part rebuilds it (and the images above it).
  local extra=""
  case "$1" in
    python|rust|cuda) extra="$(recipe debian)" ;;
  esac
  case "$1" in
    rust) extra+=" $(rustc --version)" ;;
    cuda) extra+=" ${CUDA_WHEELS[*]}" ;;
  esac
  { declare -f "make_$1"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null; echo "$1 ${SUITE} ${MIRROR} ${extra}"; } \
    | sha256sum | cut -c1-16
}

current() {
  [[ "$(docker image inspect -f "{{ index .Config.Labels \"${LABEL}\" }}" "${TAG[$1]}" 2>/dev/null)" == "$(recipe "$1")" ]]
}

# Builds a stand-in from a Dockerfile on stdin with DIR as its context.
docker_build() {
  local name="$1" dir="$2"
  docker build --quiet --label "${LABEL}=$(recipe "${name}")" -t "${TAG[${name}]}" -f - "${dir}" \
    2> >(grep -v -e "^DEPRECATED: The legacy builder" -e "BuildKit is currently disabled" -e "environment-variable.$" -e "^$" >&2) >/dev/null
}

make_debian() {
  local root
  root="$(mktemp -d)"
  trap 'rm -rf "${root}"' RETURN
  debootstrap --variant=minbase --include=ca-certificates "${SUITE}" "${root}" "${MIRROR}" >/dev/null
  cat >"${root}/etc/apt/sources.list" <<SOURCES
deb ${MIRROR} ${SUITE} main
deb ${MIRROR} ${SUITE}-updates main
deb http://deb.debian.org/debian-security ${SUITE}-security main
SOURCES
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "${root}/usr/local/share/ca-certificates/"
    chroot "${root}" update-ca-certificates >/dev/null
  fi
  # As in Docker Hub's slim images: no documentation, no apt lists, no caches.
  rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/usr/share/doc/* \
    "${root}"/usr/share/man/* "${root}"/usr/share/info/*
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"${root}/etc/dpkg/dpkg.cfg.d/docker-slim"
  tar -C "${root}" -c . | docker import \
    --change "LABEL ${LABEL}=$(recipe debian)" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["bash"]' - "${TAG[debian]}" >/dev/null
}

make_python() {
  local ctx
  ctx="$(mktemp -d)"
  trap 'rm -rf "${ctx}"' RETURN
  docker_build python "${ctx}" <<DOCKERFILE
FROM ${TAG[debian]}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
      python-is-python3 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
}

make_rust() {
  local ctx sysroot
  if [[ "$(rustc --version)" != "rustc ${RUST_VERSION} "* ]]; then
    echo "build.sh: the rust stand-in needs this machine's toolchain to be ${RUST_VERSION}, not $(rustc --version)" >&2
    exit 1
  fi
  sysroot="$(rustc --print sysroot)"
  ctx="$(mktemp -d)"
  trap 'rm -rf "${ctx}"' RETURN
  # The compiler, cargo and the host's standard library; no docs, no rust-src.
  mkdir -p "${ctx}/rust/bin" "${ctx}/rust/lib/rustlib"
  cp -a "${sysroot}/bin/cargo" "${sysroot}/bin/rustc" "${sysroot}/bin/rustdoc" "${ctx}/rust/bin/"
  cp -a "${sysroot}"/lib/*.so* "${ctx}/rust/lib/"
  cp -a "${sysroot}/lib/rustlib/x86_64-unknown-linux-gnu" "${sysroot}/lib/rustlib/etc" "${ctx}/rust/lib/rustlib/"
  docker_build rust "${ctx}" <<DOCKERFILE
FROM ${TAG[debian]}
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config \
      && rm -rf /var/lib/apt/lists/*
COPY rust/ /usr/local/rust/
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version
DOCKERFILE
}

make_cuda() {
  local ctx wheels
  wheels="${CACHE}/cuda-wheels"
  mkdir -p "${wheels}"
  local platforms=() tag
  # pip matches --platform tags exactly: name every manylinux tag these wheels use.
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 \
    manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  python3 -m pip download --quiet --no-cache-dir --no-deps --only-binary=:all: "${platforms[@]}" \
    --python-version 3.12 --dest "${wheels}" "${CUDA_WHEELS[@]}"
  ctx="$(mktemp -d)"
  trap 'rm -rf "${ctx}"' RETURN
  mkdir -p "${ctx}/lib64"
  local spec name version
  for spec in "${CUDA_WHEELS[@]}"; do
    name="${spec%%==*}"
    version="${spec##*==}"
    python3 - "${wheels}" "${name//-/_}-${version}-" "${ctx}/lib64" <<'PY'
import pathlib, sys, zipfile
wheels, prefix, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
found = [w for w in wheels.glob("*.whl") if w.name.startswith(prefix)]
if len(found) != 1:
    sys.exit(f"expected one wheel {prefix}*.whl in {wheels}, found {found}")
with zipfile.ZipFile(found[0]) as zf:
    for member in zf.namelist():
        path = pathlib.PurePosixPath(member)
        if path.parent.name == "lib" and ".so" in path.name:
            (dest / path.name).write_bytes(zf.read(member))
PY
  done
  docker_build cuda "${ctx}" <<DOCKERFILE
FROM ${TAG[debian]}
COPY lib64/ /usr/local/cuda/lib64/
RUN echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
# As in nvidia/cuda images: what the NVIDIA container runtime reads, and where it mounts the driver.
ENV CUDA_VERSION=13.0.2 NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0" LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64
DOCKERFILE
}

FORCE=0
WANTED=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) FORCE=1; shift ;;
    --build-args) build_args "${2:-}"; exit 0 ;;
    --tag) echo "${TAG[${2:-}]:?unknown image}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    debian|python|rust|cuda) WANTED+=("$1"); shift ;;
    *) echo "build.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ ${#WANTED[@]} -gt 0 ]] || WANTED=(debian python rust cuda)

if ! docker version >/dev/null 2>&1; then
  echo "build.sh: no Docker engine answers" >&2
  exit 1
fi
# Every stand-in is built on the Debian one.
[[ " ${WANTED[*]} " == *" debian "* ]] || WANTED=(debian "${WANTED[@]}")
for name in "${WANTED[@]}"; do
  if [[ ${FORCE} -eq 0 ]] && current "${name}"; then
    echo "${TAG[${name}]}: up to date"
    continue
  fi
  start=${SECONDS}
  "make_${name}"
  size="$(docker image inspect -f '{{ .Size }}' "${TAG[${name}]}")"
  echo "${TAG[${name}]}: built in $((SECONDS - start)) s, $((size / 1000000)) MB"
done
