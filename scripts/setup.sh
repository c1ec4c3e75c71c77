# Sourced by scripts/demo and scripts/test: install what is missing, never assume it.
# Debian 12 as root (or with sudo). Safe to run again: it only installs what is absent.
set -euo pipefail

INITKIT_APT_PACKAGES=(
  libarchive13 libarchive-tools cpio busybox-static zstd lz4 xz-utils
  qemu-system-x86 qemu-utils util-linux gcc libc6-dev pax-utils binutils llvm-14
)

initkit_setup() {
  local missing=() pkg sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  for pkg in "${INITKIT_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "initkit: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  # Installed, with its test tools, and from this checkout (not another clone's).
  local installed
  installed="$(cd / && python3 -c 'import elftools, libarchive, click, pytest, initbuilder, hostrun
print(initbuilder.__file__)' 2>/dev/null || true)"
  if [ "$installed" != "$INITKIT_ROOT/initbuilder/__init__.py" ] \
     || ! command -v initbuilder >/dev/null || ! command -v ruff >/dev/null; then
    echo "initkit: installing the Python package from $INITKIT_ROOT (editable) and its test tools" >&2
    python3 -m pip install -q --disable-pip-version-check -e "$INITKIT_ROOT[test]"
  fi
}

INITKIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export INITKIT_ROOT
initkit_setup
