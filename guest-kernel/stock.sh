#!/usr/bin/env bash
# stock.sh - fetch a stock Debian kernel (NVDIMM drivers as modules) for the tests that boot a
# distribution kernel as the guest, with a cache keyed by the package and its version.
#
# Input : Debian's linux-image-amd64 metapackage (override: PMEMVMM_STOCK_PACKAGE, either a
#         metapackage or a versioned linux-image-<release> package), fetched with
#         `apt-get download` from the configured archive (apt-get update once if apt has no
#         package lists, as on a fresh machine).
# Output: a cache entry ${PMEMVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pmem-vmm}/stock-kernel/
#         <package>_<version>/ holding
#           vmlinuz      the package's bzImage, unchanged
#           vmlinux      the ELF image unpacked from it (for PVH boot; the package has none)
#           pvh-note     `readelf -n` of vmlinux's Xen notes (type 0x12 = the PVH entry)
#           config       the package's kernel config
#           System.map   the package's (Debian ships a stub: the real one is in the -dbg package)
#           lib/modules/<release>/   the package's modules tree plus modules.dep (busybox depmod)
#           package      "<package> <version> <release>"
#         and on stdout (only there) the shell-sourceable lines
#           STOCK_BZIMAGE=...  STOCK_VMLINUX=...  STOCK_MODULES=<lib/modules/<release> dir>
#           STOCK_RELEASE=...  STOCK_PACKAGE=...  STOCK_VERSION=...  STOCK_PVH=yes|no
#           STOCK_DIR=<cache entry>
# Everything else goes to stderr.
set -euo pipefail

readonly DEFAULT_PACKAGE="linux-image-amd64"
PACKAGE="${PMEMVMM_STOCK_PACKAGE:-$DEFAULT_PACKAGE}"
readonly PACKAGE
CACHE_ROOT="${PMEMVMM_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/pmem-vmm}"
readonly SCACHE="${CACHE_ROOT}/stock-kernel"

log() { printf '[guest-kernel/stock.sh] %s\n' "$*" >&2; }
die() { printf '[guest-kernel/stock.sh] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $(basename "$0") [-h]

Fetch the stock Debian kernel package ${PACKAGE} (set PMEMVMM_STOCK_PACKAGE to pick another
linux-image package) with apt-get download, unpack it into
  ${SCACHE}/<package>_<version>/
and print STOCK_BZIMAGE=, STOCK_VMLINUX=, STOCK_MODULES=, STOCK_RELEASE=, STOCK_PACKAGE=,
STOCK_VERSION=, STOCK_PVH=, STOCK_DIR= on stdout. A complete cache entry is reused.
EOF
}

case "${1:-}" in
    "") ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
esac

export LC_ALL=C
for t in apt-cache apt-get dpkg-deb xz readelf busybox sha256sum flock; do
    command -v "$t" >/dev/null 2>&1 || die "required tool '$t' not found"
done

# show PKG: apt's record of the version it would install (one apt-cache call: each takes
# seconds on a loaded machine), empty when apt knows no such package.
show() { apt-cache show --no-all-versions "$1" 2>/dev/null || true; }
field() { sed -nE "s/^$1:[[:space:]]*(.*)$/\1/p" | head -n 1; }

RECORD="$(show "$PACKAGE")"
if [[ -z "$RECORD" ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "apt knows no package ${PACKAGE} and we are not root to run apt-get update"
    log "apt knows no ${PACKAGE}: running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    RECORD="$(show "$PACKAGE")"
    [[ -n "$RECORD" ]] || die "no package ${PACKAGE} in the configured archives"
fi

# A metapackage (linux-image-amd64) depends on exactly one versioned linux-image-<release>
# package, which holds the kernel, pinned to a version ("(= 6.1.192-3)"); follow it.
if [[ "$PACKAGE" == linux-image-[0-9]* ]]; then
    IMAGE_PKG="$PACKAGE"
    VERSION="$(field Version <<<"$RECORD")"
else
    dep="$(field Depends <<<"$RECORD" | tr ',' '\n' \
        | sed -nE 's/^[[:space:]]*(linux-image-[0-9][^[:space:]]*)[[:space:]]*(\(= ([^)]+)\))?.*$/\1 \3/p' \
        | head -n 1)"
    IMAGE_PKG="${dep%% *}"
    VERSION="${dep#* }"
    [[ -n "$IMAGE_PKG" ]] || die "${PACKAGE} depends on no linux-image-<release> package"
    if [[ -z "$VERSION" || "$VERSION" == "$IMAGE_PKG" ]]; then
        VERSION="$(show "$IMAGE_PKG" | field Version)"
    fi
fi
[[ -n "$VERSION" ]] || die "apt has no candidate version of ${IMAGE_PKG}"
RELEASE="${IMAGE_PKG#linux-image-}"
RELEASE="${RELEASE%-unsigned}"

readonly ENTRY="${SCACHE}/${IMAGE_PKG}_${VERSION}"

print_result() {
    local pvh=no
    grep -qE 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+.*\(0x00000012\)' "${ENTRY}/pvh-note" && pvh=yes
    printf 'STOCK_BZIMAGE=%s\n' "${ENTRY}/vmlinuz"
    printf 'STOCK_VMLINUX=%s\n' "${ENTRY}/vmlinux"
    printf 'STOCK_MODULES=%s\n' "${ENTRY}/lib/modules/${RELEASE}"
    printf 'STOCK_RELEASE=%s\n' "$RELEASE"
    printf 'STOCK_PACKAGE=%s\n' "$IMAGE_PKG"
    printf 'STOCK_VERSION=%s\n' "$VERSION"
    printf 'STOCK_PVH=%s\n' "$pvh"
    printf 'STOCK_DIR=%s\n' "$ENTRY"
}

# "package" is written last, so its presence marks a complete entry.
if [[ -f "${ENTRY}/package" ]]; then
    log "reusing ${ENTRY}"
    print_result
    exit 0
fi

mkdir -p "$SCACHE"
# Concurrent test processes may ask at once: one fetches, the others wait and reuse it.
exec 9>"${SCACHE}/.lock"
flock 9
if [[ -f "${ENTRY}/package" ]]; then
    print_result
    exit 0
fi

STAGE=""
cleanup() { [[ -z "$STAGE" ]] || rm -rf -- "$STAGE"; }
trap cleanup EXIT
STAGE="$(mktemp -d "${SCACHE}/.fetch.XXXXXX")"
# apt-get download drops privileges to _apt, which must be able to write here.
chmod 0755 "$STAGE"

log "downloading ${IMAGE_PKG}=${VERSION}"
(cd "$STAGE" && apt-get download -q "${IMAGE_PKG}=${VERSION}" >&2) \
    || die "apt-get download ${IMAGE_PKG}=${VERSION} failed"
deb="$(find "$STAGE" -maxdepth 1 -name '*.deb' | head -n 1)"
[[ -n "$deb" ]] || die "apt-get download left no .deb in ${STAGE}"
log "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "${STAGE}/x"

root="${STAGE}/x"
out="${STAGE}/entry"
mkdir -p "${out}/lib/modules"
[[ -f "${root}/boot/vmlinuz-${RELEASE}" ]] || die "${IMAGE_PKG} has no boot/vmlinuz-${RELEASE}"
mv "${root}/boot/vmlinuz-${RELEASE}" "${out}/vmlinuz"
mv "${root}/boot/config-${RELEASE}" "${out}/config"
mv "${root}/boot/System.map-${RELEASE}" "${out}/System.map"
[[ -d "${root}/lib/modules/${RELEASE}" ]] || die "${IMAGE_PKG} has no lib/modules/${RELEASE}"
mv "${root}/lib/modules/${RELEASE}" "${out}/lib/modules/${RELEASE}"

# Debian generates modules.dep at install time (depmod in the postinst); the guest's busybox
# modprobe needs it.
log "generating modules.dep"
busybox depmod -b "$out" "$RELEASE" || die "busybox depmod failed"
[[ -s "${out}/lib/modules/${RELEASE}/modules.dep" ]] || die "depmod wrote no modules.dep"

# The vmlinux inside the bzImage: the payload is one compressed stream after the setup code
# (Debian's 6.1 uses xz, CONFIG_KERNEL_XZ). Try each xz magic until one unpacks to an ELF, as
# the kernel's scripts/extract-vmlinux does.
log "unpacking vmlinux from vmlinuz"
found=0
while IFS=: read -r offset _; do
    # (xz stops after one stream, so tail may die of SIGPIPE: keep it out of the status.)
    if xz -dc --single-stream < <(tail -c "+$((offset + 1))" "${out}/vmlinuz") \
        >"${out}/vmlinux" 2>/dev/null && readelf -h "${out}/vmlinux" >/dev/null 2>&1; then
        found=1
        break
    fi
done < <(grep -obUaP '\xfd7zXZ\x00' "${out}/vmlinuz" || true)
[[ "$found" -eq 1 ]] || die "found no xz-compressed ELF in $(basename "$deb")'s vmlinuz (is it still CONFIG_KERNEL_XZ?)"
readelf -n "${out}/vmlinux" | grep -A1 -E '^\s*Xen\s' >"${out}/pvh-note" || true

printf '%s %s %s\n' "$IMAGE_PKG" "$VERSION" "$RELEASE" >"${out}/package"
rm -rf -- "$ENTRY"
mv "$out" "$ENTRY"
log "cached ${IMAGE_PKG} ${VERSION} in ${ENTRY}"
print_result
