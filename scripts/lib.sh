# Shared helpers for scripts/*.sh (sourced).
step() { printf '\n==> %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: installs the Debian packages that are missing (idempotent, quiet).
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# venv_install: the Python tools the tests drive (ansible, sushy-emulator, …), pinned in
# scripts/requirements-test.txt, in one venv ($BOOTGATE_VENV, default /var/tmp/bootgate-venv).
venv_install() {
  export BOOTGATE_VENV="${BOOTGATE_VENV:-/var/tmp/bootgate-venv}"
  local req=scripts/requirements-test.txt stamp="$BOOTGATE_VENV/.requirements"
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then return 0; fi
  step "pip install -r $req into $BOOTGATE_VENV"
  [ -x "$BOOTGATE_VENV/bin/pip" ] || python3 -m venv "$BOOTGATE_VENV"
  "$BOOTGATE_VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
}
