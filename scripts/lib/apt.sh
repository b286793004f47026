# Sourced by the setup scripts (bash). Installs the named Debian packages that
# are not installed yet, in one apt transaction; does nothing when all are.
# Needs a `log` function from the sourcing script. SPARK_SKIP_APT=1 skips it.
apt_install_missing() {
  if [[ "${SPARK_SKIP_APT:-0}" == 1 ]]; then return; fi
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
