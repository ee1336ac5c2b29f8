# shellcheck shell=bash
# Shared shell functions for scripts/run, scripts/test and .ci/run.
# Source it; it defines functions and EVENTSD_ROOT, and changes no shell options.

# Absolute, symlink-free path of the repository root (two levels above this file).
EVENTSD_ROOT=${EVENTSD_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
export EVENTSD_ROOT

# Debian packages the build and the server need (scripts/run; the build configures the
# tests too, hence catch2; nodejs and npm build the web assets).
EVENTSD_RUN_PACKAGES=(
  build-essential cmake ninja-build
  libcaf-dev librocksdb-dev libboost-dev libboost-system-dev libpq-dev libtcmalloc-minimal4
  catch2 nlohmann-json3-dev
  postgresql-15 postgresql-client-15 postgresql-contrib
  curl nodejs npm
)
# ... and what the tests and the benchmarks need besides.
EVENTSD_PACKAGES=(
  "${EVENTSD_RUN_PACKAGES[@]}"
  wrk rocksdb-tools bc chromium prometheus
  e2fsprogs # mkfs.ext4, for a test's frozen file system (fsfreeze)
)

log()  { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs "$@" as root: directly when we are root, else through sudo (if there is one).
as_root() {
  if [[ ${EUID} -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (no sudo available)"
  fi
}

# Installs those of EVENTSD_PACKAGES (or of "$@", when given) that are not installed yet.
# apt-get update runs only when something is missing.
ensure_packages() {
  local pkgs=("$@")
  [[ ${#pkgs[@]} -gt 0 ]] || pkgs=("${EVENTSD_PACKAGES[@]}")
  local missing=() p status
  for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] && continue
    # NodeSource's nodejs bundles npm and conflicts with Debian's npm package.
    [[ $p == npm ]] && command -v npm >/dev/null 2>&1 && continue
    missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing missing packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
  fi
  check_node
}

# Warns when Node.js is older than 20: the locked npm packages of the web assets' tests
# (the OpenAPI validator, the /ui browser test) need 20 or later; Debian 12's own nodejs
# is 18, so a machine without a newer one (e.g. NodeSource's) fails those two tests.
check_node() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 0
  if (( major < 20 )); then
    warn "Node.js $(node --version) is older than 20: the OpenAPI validation and /ui browser tests need Node.js 20 or later (e.g. NodeSource's nodejs 20)"
  fi
}

# Configures build/ (Ninja, Release) unless it already is, then builds the given
# targets (default: everything, tests included). The server ends up in build/eventsd.
build_release() {
  build_in "$EVENTSD_ROOT/build" Release "" "$@"
}

# Configures build-sanitize/ (RelWithDebInfo, AddressSanitizer and
# UndefinedBehaviorSanitizer) unless it already is, then builds everything.
build_sanitized() {
  build_in "$EVENTSD_ROOT/build-sanitize" RelWithDebInfo address,undefined "$@"
}

# build_in DIR BUILD_TYPE SANITIZERS [TARGET...]
build_in() {
  local src=${EVENTSD_ROOT} bin=$1 type=$2 sanitize=$3
  shift 3
  [[ -f $src/CMakeLists.txt ]] || die "no CMakeLists.txt in $src"
  if [[ ! -f $bin/build.ninja ]] \
     || ! grep -qx "CMAKE_BUILD_TYPE:STRING=$type" "$bin/CMakeCache.txt" 2>/dev/null \
     || ! grep -qx "EVENTSD_SANITIZE:STRING=$sanitize" "$bin/CMakeCache.txt" 2>/dev/null; then
    log "configuring $bin (Ninja, $type${sanitize:+, sanitizers $sanitize})"
    cmake -S "$src" -B "$bin" -G Ninja -DCMAKE_BUILD_TYPE="$type" -DEVENTSD_SANITIZE="$sanitize"
  fi
  log "building${1:+ $*}"
  cmake --build "$bin" -j"$(nproc)" ${1:+--target "$@"}
}
