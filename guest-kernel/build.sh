#!/usr/bin/env bash
# build.sh - build the pmem-vmm guest / nested-L1 kernel, with a content-addressed cache.
#
# Inputs : Debian's linux-source-6.12 package (/usr/src/linux-source-6.12.tar.xz),
#          guest-kernel/config-fragment, guest-kernel/patches/*.patch (git am, name order).
# Output : a cache entry  ${PMEMVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pmem-vmm}/kernel/<hash>/
#          holding bzImage, vmlinux, config, System.map, source-version, kernel-release,
#          inputs, pvh-note, build.log; and on stdout (only there) the shell-sourceable lines
#            BZIMAGE=...  VMLINUX=...  KERNEL_VERSION=...  SOURCE_VERSION=...  KERNEL_DIR=...
# Everything else goes to stderr.
set -euo pipefail

# Bump whenever the recipe below changes in a way that changes the resulting kernel.
readonly RECIPE_VERSION="pmemvmm-kernel-recipe-1"

readonly PKG="linux-source-6.12"
readonly TARBALL="/usr/src/${PKG}.tar.xz"
readonly ARCH_MAKE="x86_64"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly FRAGMENT="${SCRIPT_DIR}/config-fragment"
readonly PATCH_DIR="${SCRIPT_DIR}/patches"
CACHE_ROOT="${PMEMVMM_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/pmem-vmm}"
readonly KCACHE="${CACHE_ROOT}/kernel"

log() { printf '[guest-kernel/build.sh] %s\n' "$*" >&2; }
die() { printf '[guest-kernel/build.sh] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $(basename "$0") [--print | --force | --unpack DIR | -h]

Build the pmem-vmm guest kernel (also used as the nested testbed's L1 host kernel)
from Debian's ${PKG}, config-fragment and patches/*.patch, caching the result under
  ${KCACHE}/<hash>/
(set PMEMVMM_CACHE to move the cache).  A complete cache entry is reused without building.

Options:
  --print        build if needed, then print the result (the default)
  --force        rebuild even if a complete cache entry exists, and replace it
  --unpack DIR   only unpack the source into DIR as a git repository with
                 patches/*.patch applied (for writing new patches), then exit
  -h, --help     show this help

stdout (and nothing else goes there), shell-sourceable:
  BZIMAGE=<abs path>  VMLINUX=<abs path>  KERNEL_VERSION=<release>
  SOURCE_VERSION=<debian version of ${PKG}>  KERNEL_DIR=<cache entry dir>
EOF
}

FORCE=0
UNPACK_DIR=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --print) ;;
        --force) FORCE=1 ;;
        --unpack)
            [[ $# -ge 2 ]] || die "--unpack needs a directory"
            UNPACK_DIR="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# ---------------------------------------------------------------- inputs --------------

source_version() {
    dpkg-query -W -f='${Version}' "$PKG" 2>/dev/null || true
}

ensure_source_package() {
    local v
    v="$(source_version)"
    if [[ -n "$v" && -f "$TARBALL" ]]; then
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "${PKG} is not installed and we are not root: run 'apt-get install -y ${PKG}'"
    log "${PKG} is not installed; installing it with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$PKG" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$PKG" >&2 || die "could not install ${PKG}"
    fi
    [[ -n "$(source_version)" ]] || die "${PKG} still not installed after apt-get"
    [[ -f "$TARBALL" ]] || die "${TARBALL} missing although ${PKG} is installed"
}

# Patches, in the order they are applied (C-locale name order).
list_patches() {
    [[ -d "$PATCH_DIR" ]] || return 0
    find "$PATCH_DIR" -maxdepth 1 -type f -name '*.patch' -printf '%f\n' | LC_ALL=C sort
}

# The text whose sha256 names the cache entry; also stored in the entry as "inputs".
input_manifest() {
    local sv="$1" p
    printf 'recipe %s\n' "$RECIPE_VERSION"
    printf 'source-package %s %s\n' "$PKG" "$sv"
    printf 'config-fragment %s\n' "$(sha256sum < "$FRAGMENT" | cut -d' ' -f1)"
    while IFS= read -r p; do
        printf 'patch %s %s\n' "$p" "$(sha256sum < "${PATCH_DIR}/${p}" | cut -d' ' -f1)"
    done < <(list_patches)
}

entry_complete() {
    local d="$1" f
    [[ -f "${d}/.complete" ]] || return 1
    for f in bzImage vmlinux config System.map source-version kernel-release; do
        [[ -s "${d}/${f}" ]] || return 1
    done
}

print_result() {
    local d="$1"
    printf 'BZIMAGE=%s\n' "${d}/bzImage"
    printf 'VMLINUX=%s\n' "${d}/vmlinux"
    printf 'KERNEL_VERSION=%s\n' "$(<"${d}/kernel-release")"
    printf 'SOURCE_VERSION=%s\n' "$(<"${d}/source-version")"
    printf 'KERNEL_DIR=%s\n' "$d"
}

check_tools() {
    local missing=() t
    for t in make gcc ld flex bison bc tar xz git readelf flock sha256sum perl; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [[ -f /usr/include/libelf.h ]] || missing+=("libelf.h(libelf-dev)")
    [[ -f /usr/include/openssl/ssl.h ]] || missing+=("openssl/ssl.h(libssl-dev)")
    if [[ ${#missing[@]} -gt 0 ]]; then
        die "missing build tools: ${missing[*]} (apt-get install -y build-essential bc flex bison libelf-dev libssl-dev git xz-utils)"
    fi
}

# ---------------------------------------------------------------- source tree ---------

# unpack_source DIR: DIR/linux = the Debian source as a git repo with our patches applied.
unpack_source() {
    local dest="$1" p n=0
    mkdir -p "$dest"
    log "unpacking ${TARBALL}"
    tar -C "$dest" -xf "$TARBALL"
    [[ -d "${dest}/${PKG}" ]] || die "tarball did not contain ${PKG}/"
    mv "${dest}/${PKG}" "${dest}/linux"
    (
        cd "${dest}/linux"
        log "initialising a git repository over the source (base for git am)"
        git init -q
        git config user.name "pmem-vmm guest-kernel build"
        git config user.email "guest-kernel@pmem-vmm.invalid"
        git config commit.gpgsign false
        git config core.autocrlf false
        # -f: Debian's top-level .gitignore ignores everything but debian/ ("/*").
        git add -A -f .
        # fixed dates: the same package version gives the same base commit id
        local when
        when="@$(stat -c %Y "$TARBALL") +0000"
        GIT_AUTHOR_DATE="$when" GIT_COMMITTER_DATE="$when" \
            git commit -q --no-verify -m "Debian ${PKG} $(source_version)"
    )
    while IFS= read -r p; do
        n=$((n + 1))
        log "applying patch ${p}"
        if ! git -C "${dest}/linux" am -q --no-gpg-sign "${PATCH_DIR}/${p}" >&2; then
            git -C "${dest}/linux" am --abort >/dev/null 2>&1 || true
            die "patch ${p} does not apply (git am failed)"
        fi
    done < <(list_patches)
    log "applied ${n} patch(es)"
}

# kmake ARGS...: make in the source tree with reproducibility knobs, output to the log.
# LOCALVERSION= (set, empty) keeps setlocalversion from appending "+" for the git tree.
kmake() {
    make -C "$SRC" ARCH="$ARCH_MAKE" LOCALVERSION= \
        KBUILD_BUILD_USER=pmemvmm KBUILD_BUILD_HOST=pmemvmm \
        KBUILD_BUILD_TIMESTAMP="$BUILD_TIMESTAMP" "$@" >>"$LOG" 2>&1
}

# Every CONFIG_ assignment and "is not set" line of the fragment must be in the final .config.
verify_config() {
    local cfg="$1" line sym bad=() now
    while IFS= read -r line; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)= ]]; then
            sym="${BASH_REMATCH[1]}"
            grep -qxF -- "$line" "$cfg" && continue
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym="${BASH_REMATCH[1]}"
            # also holds when the symbol is absent (its dependencies are off)
            grep -qE "^${sym}=" "$cfg" || continue
        else
            continue
        fi
        now="$(grep -E "^(# )?${sym}[= ]" "$cfg" || true)"
        bad+=("${line}   (final .config: ${now:-absent})")
    done < "$FRAGMENT"
    if [[ ${#bad[@]} -gt 0 ]]; then
        log "these config-fragment settings did not survive olddefconfig (missing dependency?):"
        printf '    %s\n' "${bad[@]}" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- build ---------------

TMP=""
LOG=""
SRC=""
cleanup() {
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        rm -rf -- "$TMP"
    fi
}
on_failure() {
    local rc=$?
    if [[ $rc -ne 0 && -n "$LOG" && -f "$LOG" ]]; then
        local keep="${KCACHE}/failed-${HASH:-unknown}.log"
        cp -f -- "$LOG" "$keep" 2>/dev/null || keep="$LOG"
        {
            printf '[guest-kernel/build.sh] build FAILED (rc=%s); last 40 lines of %s:\n' "$rc" "$keep"
            tail -n 40 -- "$LOG"
        } >&2
    fi
    cleanup
    exit "$rc"
}

build_entry() {
    local entry="$1" sv="$2" t0 out
    t0=$(date +%s)
    # Leftovers of an interrupted build of this entry (we hold its lock, so they are stale).
    find "$KCACHE" -maxdepth 1 -name ".build-${HASH}.*" -exec rm -rf -- {} +
    TMP="$(mktemp -d "${KCACHE}/.build-${HASH}.XXXXXX")"
    trap on_failure EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    LOG="${TMP}/build.log"
    out="${TMP}/out"
    mkdir -p "$out"
    : >"$LOG"
    unpack_source "$TMP" 2>&1 | tee -a "$LOG" >&2
    SRC="${TMP}/linux"
    # Fixed build timestamp (uname -v): the tarball's mtime, which comes from the package.
    BUILD_TIMESTAMP="$(date -u -d "@$(stat -c %Y "$TARBALL")" '+%Y-%m-%d %H:%M:%S UTC')"

    log "configuring: tinyconfig + config-fragment + olddefconfig"
    kmake tinyconfig
    (cd "$SRC" && ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$LOG" 2>&1
    kmake olddefconfig
    verify_config "${SRC}/.config" || die "config-fragment settings were dropped (see above)"

    log "compiling with make -j$(nproc) bzImage (about 6-7 minutes on 2 cores; log: ${LOG})"
    kmake -j"$(nproc)" bzImage
    local release
    release="$(<"${SRC}/include/config/kernel.release")"
    [[ -n "$release" ]] || die "empty include/config/kernel.release"

    [[ -f "${SRC}/arch/x86/boot/bzImage" ]] || die "no bzImage produced"
    [[ -f "${SRC}/vmlinux" ]] || die "no vmlinux produced"
    # PVH boot needs the XEN_ELFNOTE_PHYS32_ENTRY note (owner "Xen", type 0x12) in vmlinux.
    readelf -n "${SRC}/vmlinux" | grep -A1 -E '^\s*Xen\s' >"${out}/pvh-note" || true
    grep -qiE 'Xen\s+0x[0-9a-f]+\s+.*(0x00000012|PHYS32)' "${out}/pvh-note" \
        || die "vmlinux has no PVH entry note (Xen note type 0x12); is CONFIG_PVH=y?"

    cp -- "${SRC}/arch/x86/boot/bzImage" "${out}/bzImage"
    cp -- "${SRC}/vmlinux" "${out}/vmlinux"
    cp -- "${SRC}/.config" "${out}/config"
    cp -- "${SRC}/System.map" "${out}/System.map"
    printf '%s\n' "$sv" >"${out}/source-version"
    printf '%s\n' "$release" >"${out}/kernel-release"
    input_manifest "$sv" >"${out}/inputs"
    printf '%s\n' "$(( $(date +%s) - t0 ))" >"${out}/build-seconds"
    cp -- "$LOG" "${out}/build.log"
    sync -f "${out}/vmlinux" 2>/dev/null || true
    : >"${out}/.complete"

    # Swap the finished entry into place (rename is atomic; readers also need .complete).
    if [[ -e "$entry" ]]; then
        mv -- "$entry" "${TMP}/old-entry"
    fi
    mv -- "$out" "$entry"
    rm -f -- "${KCACHE}/failed-${HASH}.log"
    log "built ${release} in $(<"${entry}/build-seconds") s -> ${entry}"
    trap - EXIT INT TERM
    cleanup
}

main() {
    if [[ -n "$UNPACK_DIR" ]]; then
        ensure_source_package
        check_tools
        [[ ! -e "${UNPACK_DIR}/linux" ]] || die "${UNPACK_DIR}/linux already exists"
        unpack_source "$UNPACK_DIR"
        log "source tree ready: ${UNPACK_DIR}/linux (commit your change there, then: git format-patch -o ${PATCH_DIR} ...)"
        return 0
    fi

    [[ -f "$FRAGMENT" ]] || die "config fragment not found: ${FRAGMENT}"
    ensure_source_package
    local sv entry
    sv="$(source_version)"
    HASH="$(input_manifest "$sv" | sha256sum | cut -c1-16)"
    entry="${KCACHE}/${HASH}"

    if [[ $FORCE -eq 0 ]] && entry_complete "$entry"; then
        print_result "$entry"
        return 0
    fi

    mkdir -p "$KCACHE"
    exec 9>"${KCACHE}/.lock-${HASH}"
    local waited=0
    if ! flock -n 9; then
        log "another invocation is building ${HASH}; waiting for it"
        flock 9
        waited=1
    fi
    # Re-check under the lock. A --force caller that had to wait accepts the fresh result.
    if { [[ $FORCE -eq 0 ]] || [[ $waited -eq 1 ]]; } && entry_complete "$entry"; then
        print_result "$entry"
        return 0
    fi

    check_tools
    log "building kernel ${HASH} (${PKG} ${sv}, $(list_patches | wc -l) patch(es))"
    build_entry "$entry" "$sv"
    print_result "$entry"
}

HASH=""
BUILD_TIMESTAMP=""
main
