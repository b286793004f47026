#!/usr/bin/env bash
# Checks the sparkd .deb without a Raspberry Pi and without touching this
# machine's installation:
#   1. metadata (dpkg-deb -I): name, arm64, deliberate Depends, conffile,
#      maintainer scripts
#   2. contents (dpkg-deb -c): every file where the unit and config expect it
#   3. the binaries' glibc needs are covered by the libc6 dependency
#   4. a real `dpkg -i` into a throwaway merged-/usr root with the maintainer
#      scripts run chrootless under $DPKG_ROOT: the user, groups, credentials
#      directory and boot enablement land there, and the host's accounts and
#      units are unchanged
#   5. systemd-analyze verify/security on the unit as installed
#   6. the installed arm64 sparkd accepts the installed config (under qemu)
#   7. remove and purge clean up, keeping the accounts
#
#   tests/package/check-deb.sh target-aarch64/debian/sparkd_*_arm64.deb
#
# Run as root (dpkg needs it to set file ownership in the throwaway root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEB="${1:?usage: $0 PATH.deb}"
DEB="$(cd "$(dirname "$DEB")" && pwd)/$(basename "$DEB")"
QEMU="$ROOT/deps/qemu/usr/bin/qemu-aarch64"

fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
ok() { printf 'check-deb: ok: %s\n' "$*"; }

[[ "$(id -u)" == 0 ]] || fail "run as root (dpkg --root needs to chown)"
for t in dpkg dpkg-deb systemd-analyze systemd-sysusers deb-systemd-helper; do
  command -v "$t" >/dev/null || fail "$t not found: run scripts/setup.sh"
done

WORK="$(mktemp -d /tmp/sparkd-deb-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# --- 1. metadata ------------------------------------------------------------
info="$(dpkg-deb -I "$DEB")"
field() { dpkg-deb -f "$DEB" "$1"; }
[[ "$(field Package)" == sparkd ]] || fail "Package is $(field Package)"
[[ "$(field Architecture)" == arm64 ]] || fail "Architecture is $(field Architecture)"
depends="$(field Depends)"
for want in 'libc6 (>= 2.34)' 'libgcc-s1' 'libstdc++6' 'systemd (>= 252)'; do
  grep -qF "$want" <<<"$depends" || fail "Depends lacks '$want': $depends"
done
for s in postinst prerm postrm conffiles; do
  grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$s" <<<"$info" || fail "control member $s missing:
$info"
done
conffiles="$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)"
[[ "$conffiles" == "/etc/sparkd/sparkd.toml" ]] || fail "conffiles: $conffiles"
ok "metadata: arm64, Depends: $depends; conffile /etc/sparkd/sparkd.toml"

# --- 2. contents ------------------------------------------------------------
contents="$(dpkg-deb -c "$DEB")"
has() { # mode-prefix path
  grep -qE "^$1 .* \./${2//./\\.}( -> .*)?$" <<<"$contents" || fail "missing $1 ./$2"
}
has '-rwxr-xr-x' usr/bin/sparkd
has '-rwxr-xr-x' usr/bin/sparkctl
has '-rw-r--r--' lib/systemd/system/sparkd.service
has '-rw-r--r--' usr/lib/sysusers.d/sparkd.conf
has '-rw-r--r--' usr/lib/tmpfiles.d/sparkd.conf
has '-rw-r--r--' etc/sparkd/sparkd.toml
has '-rw-r--r--' usr/share/sparkd/models/centerface.toml
has '-rw-r--r--' usr/share/sparkd/models/centerface.onnx
has '-rw-r--r--' usr/share/sparkd/models/nanodet.toml
has '-rw-r--r--' usr/share/sparkd/models/nanodet.onnx
has '-rw-r--r--' usr/share/sparkd/models/coco80.txt
has '-rw-r--r--' usr/share/sparkd/demo/astronaut.png
has '-rw-r--r--' usr/lib/sparkd/libonnxruntime.so.1.31.1
grep -qE '^l.* \./usr/lib/sparkd/libonnxruntime\.so -> libonnxruntime\.so\.1\.31\.1$' <<<"$contents" \
  || fail "usr/lib/sparkd/libonnxruntime.so is not a symlink to libonnxruntime.so.1.31.1"
has '-rw-r--r--' usr/share/doc/sparkd/deployment.md
ok "contents: binaries, unit, sysusers, tmpfiles, conffile, model, demo photos, ONNX Runtime (+ symlink)"

# --- 3. glibc needs vs Depends ------------------------------------------------
dpkg-deb -x "$DEB" "$WORK/x"
declared="$(sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$depends")"
for f in usr/bin/sparkd usr/bin/sparkctl usr/lib/sparkd/libonnxruntime.so.1.31.1; do
  aarch64-linux-gnu-objdump -f "$WORK/x/$f" | grep -q elf64-littleaarch64 || fail "$f is not aarch64"
  need="$(aarch64-linux-gnu-objdump -T "$WORK/x/$f" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
  [[ "$(printf '%s\n%s\n' "$need" "$declared" | sort -V | tail -n1)" == "$declared" ]] \
    || fail "$f needs GLIBC_$need but Depends says libc6 (>= $declared)"
  [[ "$(printf '%s\n2.36\n' "$need" | sort -V | tail -n1)" == 2.36 ]] \
    || fail "$f needs GLIBC_$need; Raspberry Pi OS bookworm has 2.36"
done
ok "glibc: every ELF needs <= GLIBC_$declared (declared) <= 2.36 (bookworm)"

# --- 4. install into a throwaway root --------------------------------------
R="$WORK/root"
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib" "$R/etc" "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers"
ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"   # merged /usr, as on bookworm
touch "$R/var/lib/dpkg/status" "$R/var/lib/dpkg/available"
# A device already has these groups; sysusers adds sparkd to them.
printf 'root:x:0:\nvideo:x:44:\naudio:x:29:\n' >"$R/etc/group"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"

host_state() {
  sha256sum /etc/passwd /etc/group /etc/shadow /etc/gshadow 2>/dev/null
  ls -la /etc/systemd/system/multi-user.target.wants/ 2>/dev/null
  ls -d /etc/sparkd /var/lib/sparkd /lib/systemd/system/sparkd.service 2>/dev/null || true
}
before="$(host_state)"

dpkg_r() { dpkg --root="$R" --force-script-chrootless --force-architecture --force-depends \
  --log=/dev/null "$@"; }
dpkg_r -i "$DEB" >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "dpkg -i into $R"; }
[[ "$(dpkg --root="$R" -s sparkd | sed -n 's/^Status: //p')" == "install ok installed" ]] || fail "not installed"
dpkg --root="$R" -s sparkd | grep -q '^ /etc/sparkd/sparkd.toml [0-9a-f]\{32\}$' || fail "conffile not registered"

for f in usr/bin/sparkd usr/bin/sparkctl lib/systemd/system/sparkd.service etc/sparkd/sparkd.toml \
  usr/share/sparkd/models/centerface.onnx usr/share/sparkd/models/centerface.toml \
  usr/share/sparkd/models/nanodet.onnx usr/share/sparkd/models/nanodet.toml usr/share/sparkd/models/coco80.txt \
  usr/share/sparkd/demo/astronaut.png usr/lib/sparkd/libonnxruntime.so; do
  [[ -e "$R/$f" ]] || fail "$f did not land in the root"
done
grep -q '^sparkd:x:[0-9]*:[0-9]*:spark-edge daemon:/var/lib/sparkd:/usr/sbin/nologin$' "$R/etc/passwd" \
  || fail "user sparkd: $(cat "$R/etc/passwd")"
grep -q '^sparkd:x:' "$R/etc/group" || fail "group sparkd"
grep -q '^sparkd-admin:x:' "$R/etc/group" || fail "group sparkd-admin"
grep -q '^video:x:44:sparkd$' "$R/etc/group" || fail "sparkd not in video: $(grep video "$R/etc/group")"
grep -q '^audio:x:29:sparkd$' "$R/etc/group" || fail "sparkd not in audio"
[[ "$(stat -c '%a %U' "$R/etc/sparkd/credentials")" == "700 root" ]] || fail "credentials dir: $(stat -c '%a %U' "$R/etc/sparkd/credentials")"
[[ -L "$R/etc/systemd/system/multi-user.target.wants/sparkd.service" ]] || fail "not enabled at boot"
after="$(host_state)"
[[ "$before" == "$after" ]] || fail "the install changed this host:
--- before
$before
--- after
$after"
ok "dpkg -i into a throwaway root: files, user sparkd in video+audio, sparkd-admin, credentials 0700, enabled; host untouched"

# --- 5. the unit as installed ----------------------------------------------
host_units="$(ls -d /usr/lib/systemd/system)"
cp -an "$host_units/." "$R/usr/lib/systemd/system/"
out="$(systemd-analyze verify --root="$R" sparkd.service 2>&1)" || fail "verify: $out"
[[ -z "$out" ]] || fail "systemd-analyze verify printed:
$out"
exposure="$(systemd-analyze security --offline=yes --root="$R" --no-pager sparkd.service 2>&1 \
  | sed -n 's/.*Overall exposure level for sparkd.service: \([0-9.]*\).*/\1/p')"
[[ -n "$exposure" ]] || fail "no exposure score"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure > 2.0"
ok "installed unit: systemd-analyze verify silent, security exposure $exposure"

# --- 6. installed binary + installed config ---------------------------------
if [[ -x "$QEMU" ]]; then
  "$ROOT/scripts/qemu-aarch64" "$R/usr/bin/sparkd" check-config "$R/etc/sparkd/sparkd.toml" >/dev/null \
    || fail "the installed sparkd rejects the installed config"
  ok "installed arm64 sparkd (qemu) accepts /etc/sparkd/sparkd.toml"
else
  echo "check-deb: note: $QEMU missing (scripts/build-aarch64.sh fetches it); config check under qemu not run" >&2
fi

# --- 7. remove, purge -------------------------------------------------------
dpkg_r -r sparkd >"$WORK/remove.log" 2>&1 || { cat "$WORK/remove.log" >&2; fail "dpkg -r"; }
[[ ! -e "$R/usr/bin/sparkd" ]] || fail "binary left after remove"
[[ -e "$R/etc/sparkd/sparkd.toml" ]] || fail "remove deleted the conffile (only purge should)"
dpkg_r -P sparkd >"$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log" >&2; fail "dpkg -P"; }
[[ ! -e "$R/etc/sparkd" ]] || fail "/etc/sparkd left after purge: $(ls -la "$R/etc/sparkd")"
[[ ! -e "$R/etc/systemd/system/multi-user.target.wants/sparkd.service" ]] || fail "enablement left after purge"
grep -q '^sparkd:' "$R/etc/passwd" || fail "purge removed the sparkd account (policy: keep it)"
[[ "$before" == "$(host_state)" ]] || fail "remove/purge changed this host"
ok "remove keeps the conffile; purge removes config, credentials and enablement, keeps the account"
echo "check-deb: all checks passed for $(basename "$DEB")"
