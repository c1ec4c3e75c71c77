# Sourced by scripts/demo and scripts/test: install what is missing, never assume it.
# Debian 12 (bookworm) or 13 (trixie), as root or with sudo. Safe to run again: it only
# installs what is absent. The Python package goes into the checkout's own virtual
# environment (.venv), so PEP 668 ("externally managed") Pythons work and nothing is
# installed into the system's interpreter; the scripts put .venv/bin first on PATH.
set -euo pipefail

# What initkit needs from apt, one role a word. "a|b" takes the first name the release
# has (package names differ between releases; never a fixed versioned name such as
# llvm-14); a trailing "|" makes the role optional where the release has none of them.
INITKIT_APT_ROLES=(
  "libarchive13t64|libarchive13" # libarchive, which libarchive-c drives
  libarchive-tools cpio          # bsdtar and GNU cpio: tests read initrds with both
  busybox-static                 # the initrd's shell and applets
  zstd lz4 xz-utils              # initrd compressors
  qemu-system-x86 qemu-utils     # the VMM (Debian 12's QEMU 7.2 carries the C virtiofsd)
  "virtiofsd|"                   # the Rust virtiofsd (Debian 13); Debian 12 has no package
  util-linux                     # unshare, for the read-only store view
  gcc libc6-dev binutils         # ELF fixtures, static hello, strip
  pax-utils                      # lddtree, the closure benchmark's reference
  llvm                           # a relocatable tree with $ORIGIN runpaths (closure tests)
  nix-bin                        # real store paths, closures and binary caches (store views)
  ca-certificates
)
# The interpreter and its venv module, only when python3 lacks them (a pyenv Python
# brings its own; Debian's needs python3-venv for ensurepip).
INITKIT_PYTHON_ROLES=(python3 python3-venv)

_initkit_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Each reads the whole output before matching: grep -q would leave early and, under
# pipefail, the writer's SIGPIPE would count as "not found".
_initkit_installed() {
  local status
  status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)"
  [[ "$status" == *"ok installed"* ]]
}

_initkit_known() {
  # apt has a candidate version for the package (not merely a virtual name).
  local policy
  policy="$(apt-cache policy "$1" 2>/dev/null || true)"
  [[ "$policy" =~ Candidate:\ [^\(] ]]
}

_initkit_first_known() {
  # The first name of a role ("a|b|") that apt can install, or nothing.
  local name names
  IFS='|' read -r -a names <<< "$1"
  for name in "${names[@]}"; do
    if [ -n "$name" ] && _initkit_known "$name"; then echo "$name"; return; fi
  done
}

_initkit_apt_install() {
  local role name names chosen unresolved=() missing=() need_update="" updated=""
  for role in "$@"; do
    chosen=""
    IFS='|' read -r -a names <<< "$role"
    for name in "${names[@]}"; do
      if [ -n "$name" ] && _initkit_installed "$name"; then chosen="$name"; break; fi
    done
    [ -n "$chosen" ] || unresolved+=("$role")
  done
  [ "${#unresolved[@]}" -gt 0 ] || return 0
  # Update when a required role is unknown to apt (a fresh machine has no lists); an
  # optional role the release lacks must not cost an update on every run.
  for role in "${unresolved[@]}"; do
    if [[ "$role" != *"|" ]] && [ -z "$(_initkit_first_known "$role")" ]; then
      need_update=1
    fi
  done
  if [ -n "$need_update" ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep _Packages)" ]; then
    echo "initkit: apt-get update" >&2
    _initkit_sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    updated=1
  fi
  for role in "${unresolved[@]}"; do
    chosen="$(_initkit_first_known "$role")"
    if [ -n "$chosen" ]; then
      missing+=("$chosen")
    elif [[ "$role" != *"|" ]]; then
      echo "initkit: apt knows none of: ${role//|/, }; initkit's set-up knows Debian 12" \
           "and 13 (elsewhere install that role's package by hand)" >&2
      return 1
    fi
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "initkit: installing ${missing[*]}" >&2
  _initkit_apt_get_install "${missing[@]}" && return 0
  # Lists older than what is installed (a machine's image updated from a newer snapshot
  # than its lists: libarchive13 installed at deb12u5, lists offering libarchive-tools
  # only for deb12u4) make apt refuse; fresh lists resolve it, so update once and retry.
  [ -z "$updated" ] || return 1
  echo "initkit: apt refused the install with these lists; apt-get update and retry" >&2
  _initkit_sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  _initkit_apt_get_install "${missing[@]}"
}

_initkit_apt_get_install() {
  DEBIAN_FRONTEND=noninteractive _initkit_sudo apt-get -o DPkg::Lock::Timeout=600 \
    install -y -qq --no-install-recommends "$@" >/dev/null
}

_initkit_python() {
  # The interpreter the venv is made from: python3 as found on PATH, if it can make one.
  if command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null; then
    return 0
  fi
  _initkit_apt_install "${INITKIT_PYTHON_ROLES[@]}"
  hash -r
  python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || {
    echo "initkit: needs Python 3.11 or newer as python3 (found $(python3 -V 2>&1))" >&2
    return 1
  }
}

initkit_setup() {
  _initkit_apt_install "${INITKIT_APT_ROLES[@]}"
  local venv="$INITKIT_ROOT/.venv"
  # A venv whose interpreter is gone (a removed pyenv version, a copied checkout) is
  # made again rather than half-used.
  if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    echo "initkit: $venv does not run; making it again" >&2
    rm -rf "$venv"
  fi
  if [ ! -e "$venv" ]; then
    _initkit_python
    echo "initkit: creating $venv from $(command -v python3) ($(python3 -V 2>&1))" >&2
    python3 -m venv "$venv"
  fi
  # Installed, with its test tools, and from this checkout (not another clone's).
  local installed
  installed="$(cd / && "$venv/bin/python" -c 'import elftools, libarchive, click, pytest, xdist, initbuilder, hostrun
print(initbuilder.__file__)' 2>/dev/null || true)"
  # Again when pyproject.toml changed since (its entry points, its dependencies).
  local project stamp="$venv/.initkit-pyproject"
  project="$(sha256sum < "$INITKIT_ROOT/pyproject.toml")"
  if [ "$installed" != "$INITKIT_ROOT/initbuilder/__init__.py" ] \
     || [ ! -x "$venv/bin/initbuilder" ] || [ ! -x "$venv/bin/ruff" ] \
     || [ ! -x "$venv/bin/mypy" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$project" ]; then
    echo "initkit: installing the Python package from $INITKIT_ROOT (editable) into" \
         "$venv with its test tools" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$INITKIT_ROOT[test]"
    echo "$project" > "$stamp"
  fi
  # The checkout's own bytecode, written now: where PYTHONDONTWRITEBYTECODE is set (CI
  # images, this workplace's shells) Python never writes it, and every hostrun then
  # compiles its ~40 modules again before QEMU starts (~20 ms of each boot measured;
  # docs/benchmarks.md). Python reads it whatever that variable says, and ignores a file
  # that is older than its source. Up-to-date files are skipped: ~0.2 s when warm.
  "$venv/bin/python" -m compileall -q -j 0 "$INITKIT_ROOT/guest" "$INITKIT_ROOT/hostrun" \
    "$INITKIT_ROOT/initbuilder" "$INITKIT_ROOT/initkit" >/dev/null \
    || echo "initkit: could not write the checkout's bytecode (hostrun starts slower)" >&2
  export PATH="$venv/bin:$PATH"
  hash -r
}

INITKIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export INITKIT_ROOT
initkit_setup
