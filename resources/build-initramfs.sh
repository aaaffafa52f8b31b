#!/usr/bin/env bash
# build-initramfs.sh - reproducible pmem-vmm guest initramfs (gzip'd newc cpio):
# Debian's busybox-static + resources/init + whatever --add / --add-bin bring in, and for a
# stock kernel (--kernel-modules) the modules of resources/guest-modules with their dependencies.
# Prints INITRAMFS=<abs path> on stdout; everything else goes to stderr.
set -euo pipefail

# Bump when the image layout produced below changes.
readonly RECIPE_VERSION="pmemvmm-initramfs-recipe-1"

readonly BUSYBOX_PKG="busybox-static"
readonly BUSYBOX="/bin/busybox"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
SCRIPT_PATH="${SCRIPT_DIR}/$(basename "${BASH_SOURCE[0]}")"
readonly SCRIPT_PATH
readonly INIT_SRC="${SCRIPT_DIR}/init"
readonly MODULE_LIST="${SCRIPT_DIR}/guest-modules"
CACHE_ROOT="${PMEMVMM_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/pmem-vmm}"
readonly ICACHE="${CACHE_ROOT}/initramfs"

log() { printf '[resources/build-initramfs.sh] %s\n' "$*" >&2; }
die() { printf '[resources/build-initramfs.sh] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $(basename "$0") [-o OUT] [--add SRC:DEST]... [--add-bin PATH[:DEST]]...
                         [--kernel-modules DIR]

Build the pmem-vmm guest initramfs (gzip'd newc cpio, byte-reproducible) from
${BUSYBOX_PKG} (all applets as symlinks) and resources/init.

  -o OUT               write the image to OUT; without -o it goes to the content-addressed
                       cache ${ICACHE}/<hash>/initramfs.cpio.gz
                       (set PMEMVMM_CACHE to move it) and is reused when already there
  --add SRC:DEST       copy file or directory tree SRC to absolute path DEST in the image
                       (DEST is the new name: --add dir:/opt/x makes /opt/x a copy of dir)
  --add-bin PATH[:DEST]
                       copy executable PATH (a name is looked up in \$PATH) to DEST
                       (default: its own absolute path) plus every shared library that
                       ldd reports and the dynamic loader, at their host paths
  --kernel-modules DIR for a kernel with the NVDIMM drivers as modules (a stock kernel):
                       DIR is its lib/modules/<release> tree with a modules.dep
                       (guest-kernel/stock.sh prints it as STOCK_MODULES); the modules
                       named in resources/guest-modules and everything they depend on go
                       to /lib/modules/<release>/ with a modules.dep for just them, and
                       the list to /etc/guest-modules, which /init loads with modprobe
  -h, --help           show this help

stdout: INITRAMFS=<abs path>
EOF
}

OUT=""
MODDIR=""
ADDS=()
BINS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -o|--output)
            [[ $# -ge 2 ]] || die "$1 needs a file name"
            OUT="$2"; shift ;;
        --add)
            [[ $# -ge 2 ]] || die "--add needs SRC:DEST"
            ADDS+=("$2"); shift ;;
        --add-bin)
            [[ $# -ge 2 ]] || die "--add-bin needs PATH[:DEST]"
            BINS+=("$2"); shift ;;
        --kernel-modules)
            [[ $# -ge 2 ]] || die "--kernel-modules needs a lib/modules/<release> directory"
            MODDIR="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

umask 022
export LC_ALL=C

for t in cpio gzip sha256sum find sort ldd; do
    command -v "$t" >/dev/null 2>&1 || die "required tool '$t' not found"
done
[[ -f "$INIT_SRC" ]] || die "init script not found: ${INIT_SRC}"

ensure_busybox() {
    if [[ -x "$BUSYBOX" ]] && dpkg-query -W -f='${Version}' "$BUSYBOX_PKG" >/dev/null 2>&1; then
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "${BUSYBOX_PKG} is not installed and we are not root: apt-get install -y ${BUSYBOX_PKG}"
    log "installing ${BUSYBOX_PKG}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$BUSYBOX_PKG" >&2; then
        apt-get update >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$BUSYBOX_PKG" >&2 || die "could not install ${BUSYBOX_PKG}"
    fi
    [[ -x "$BUSYBOX" ]] || die "${BUSYBOX} missing after installing ${BUSYBOX_PKG}"
}
ensure_busybox
BUSYBOX_VERSION="$(dpkg-query -W -f='${Version}' "$BUSYBOX_PKG")"

STAGE=""
cleanup() { [[ -z "$STAGE" ]] || rm -rf -- "$STAGE"; }
trap cleanup EXIT
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/pmemvmm-initramfs.XXXXXX")"
ROOT="${STAGE}/root"
mkdir -p "$ROOT"

# check_dest DEST: absolute, normalised, inside the image.
check_dest() {
    local d="$1"
    [[ "$d" == /* ]] || die "destination '$d' must be an absolute path in the image"
    [[ "$d" != */ || "$d" == / ]] || d="${d%/}"
    case "/$d/" in
        */../*|*/./*) die "destination '$1' must not contain . or .. components" ;;
    esac
    [[ "$d" != "/" ]] || die "destination '/' is not allowed"
}

# copy_file SRC DEST: regular file (symlinks followed), creating parents.
copy_file() {
    local src="$1" dest="$2"
    mkdir -p "${ROOT}$(dirname "$dest")"
    cp -L --preserve=mode -- "$src" "${ROOT}${dest}"
}

# --- base layout ----------------------------------------------------------------------
for d in bin sbin usr/bin usr/sbin lib lib64 dev proc sys tmp mnt run etc etc/guest-setup.d root var; do
    mkdir -p "${ROOT}/${d}"
done
copy_file "$BUSYBOX" /bin/busybox
while IFS= read -r applet; do
    [[ -n "$applet" && "$applet" != "bin/busybox" ]] || continue
    mkdir -p "${ROOT}/$(dirname "$applet")"
    ln -sfn /bin/busybox "${ROOT}/${applet}"
done < <("$BUSYBOX" --list-full | sort)
cp -- "$INIT_SRC" "${ROOT}/init"
chmod 0755 "${ROOT}/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"${ROOT}/etc/passwd"
printf 'root:x:0:\n' >"${ROOT}/etc/group"

# --- --add SRC:DEST -------------------------------------------------------------------
for spec in "${ADDS[@]+"${ADDS[@]}"}"; do
    [[ "$spec" == *:* ]] || die "--add '$spec': expected SRC:DEST"
    src="${spec%:*}"
    dest="${spec##*:}"
    check_dest "$dest"
    dest="${dest%/}"
    [[ -e "$src" ]] || die "--add: '$src' does not exist"
    if [[ -d "$src" ]]; then
        rm -rf -- "${ROOT:?}${dest}"
        mkdir -p "${ROOT}$(dirname "$dest")"
        cp -a --no-preserve=ownership -- "$src" "${ROOT}${dest}"
        log "added tree ${src} -> ${dest}"
    else
        copy_file "$src" "$dest"
        log "added file ${src} -> ${dest}"
    fi
done

# --- --add-bin PATH[:DEST] ------------------------------------------------------------
for spec in "${BINS[@]+"${BINS[@]}"}"; do
    if [[ "$spec" == *:* ]]; then
        bin="${spec%%:*}"
        dest="${spec#*:}"
    else
        bin="$spec"
        dest=""
    fi
    if [[ "$bin" != */* ]]; then
        bin="$(command -v "$bin" 2>/dev/null)" || die "--add-bin: '${spec%%:*}' not found in PATH"
    fi
    [[ -f "$bin" && -x "$bin" ]] || die "--add-bin: '$bin' is not an executable file"
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    [[ -n "$dest" ]] || dest="$bin"
    check_dest "$dest"
    copy_file "$bin" "$dest"
    nlibs=0
    if ldd_out="$(ldd "$bin" 2>&1)"; then
        # Lines: "libx.so.1 => /path/libx.so.1 (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)",
        # "linux-vdso.so.1 (0x..)" (virtual: skipped), "libx.so => not found" (fatal).
        if grep -q 'not found' <<<"$ldd_out"; then
            die "--add-bin ${bin}: missing libraries: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t\n' ' ')"
        fi
        while IFS= read -r lib; do
            [[ -n "$lib" ]] || continue
            copy_file "$lib" "$lib"
            nlibs=$((nlibs + 1))
        done < <(sed -nE 's#^[[:space:]]*([^[:space:]]+ => )?(/[^[:space:]]+) \(0x[0-9a-f]+\)$#\2#p' <<<"$ldd_out" | sort -u)
    fi
    log "added binary ${bin} -> ${dest} (+${nlibs} shared objects)"
done

# --- --kernel-modules DIR -------------------------------------------------------------
# module_name FILE: a module's name as modprobe spells it (dashes are underscores).
module_name() { local b="${1##*/}"; b="${b%.ko*}"; printf '%s\n' "${b//-/_}"; }
if [[ -n "$MODDIR" ]]; then
    [[ -f "${MODDIR}/modules.dep" ]] \
        || die "--kernel-modules ${MODDIR}: no modules.dep there (expected a lib/modules/<release> tree)"
    [[ -f "$MODULE_LIST" ]] || die "module list not found: ${MODULE_LIST}"
    release="$(basename "$(cd "$MODDIR" && pwd)")"
    # modules.dep lines: "kernel/x/a.ko: kernel/y/b.ko kernel/z/c.ko" (paths relative to DIR).
    declare -A dep_line=()
    while IFS= read -r line; do
        [[ -n "$line" ]] || continue
        dep_line["$(module_name "${line%%:*}")"]="$line"
    done <"${MODDIR}/modules.dep"
    wanted=()
    while IFS= read -r m; do
        m="${m%%#*}"; m="${m//[[:space:]]/}"
        [[ -n "$m" ]] || continue
        m="${m//-/_}"
        [[ -n "${dep_line[$m]+x}" ]] || die "--kernel-modules ${MODDIR}: no module '${m}' in modules.dep (built in, or named differently?)"
        wanted+=("$m")
    done <"$MODULE_LIST"
    # The closure over modules.dep (followed transitively, whatever depmod chose to list);
    # each module's own line comes along for the guest's modules.dep.
    declare -A take=()
    todo=("${wanted[@]}")
    while ((${#todo[@]})); do
        m="${todo[0]}"; todo=("${todo[@]:1}")
        [[ -z "${take[$m]+x}" ]] || continue
        [[ -n "${dep_line[$m]+x}" ]] || die "--kernel-modules ${MODDIR}: dependency '${m}' is not in modules.dep"
        take["$m"]=1
        line="${dep_line[$m]}"
        for d in ${line#*:}; do todo+=("$(module_name "$d")"); done
    done
    mdest="/lib/modules/${release}"
    mkdir -p "${ROOT}${mdest}"
    for m in $(printf '%s\n' "${!take[@]}" | sort); do
        line="${dep_line[$m]}"
        rel="${line%%:*}"
        copy_file "${MODDIR}/${rel}" "${mdest}/${rel}"
        printf '%s\n' "$line" >>"${ROOT}${mdest}/modules.dep"
    done
    printf '%s\n' "${wanted[@]}" >"${ROOT}/etc/guest-modules"
    log "added ${#take[@]} modules of ${release} (${#wanted[@]} loaded at boot: ${wanted[*]})"
fi

# --- normalise metadata ---------------------------------------------------------------
# Modes do not depend on the host's umask or the source files' group/other bits; owners are
# set by cpio -R 0:0; mtimes are 0; the file list is sorted.
find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT" -type f -perm /0111 -exec chmod 0755 {} +
find "$ROOT" -type f ! -perm /0111 -exec chmod 0644 {} +
chmod 1777 "${ROOT}/tmp"
chmod 0700 "${ROOT}/root"
if [[ "$(id -u)" -eq 0 ]]; then
    # Lets the kernel open an initial console before /init mounts devtmpfs.
    mknod -m 0600 "${ROOT}/dev/console" c 5 1
else
    log "not root: image has no /dev/console node (init reopens the console after mounting devtmpfs)"
fi
find "$ROOT" -exec touch -h -d @0 {} +

# --- content hash ---------------------------------------------------------------------
manifest() {
    printf 'recipe %s\n' "$RECIPE_VERSION"
    printf 'busybox %s %s\n' "$BUSYBOX_PKG" "$BUSYBOX_VERSION"
    printf 'script %s\n' "$(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)"
    (
        cd "$ROOT"
        # type, mode, path, symlink target (empty for non-links)
        find . -mindepth 1 -printf '%y %m %p -> %l\n' | sort -k3
        # contents of regular files
        find . -type f -print0 | sort -z | xargs -0 -r sha256sum
    )
}
manifest >"${STAGE}/manifest"
HASH="$(sha256sum <"${STAGE}/manifest" | cut -c1-16)"

if [[ -z "$OUT" ]]; then
    OUT="${ICACHE}/${HASH}/initramfs.cpio.gz"
    if [[ -s "$OUT" ]]; then
        log "reusing cached image ${HASH}"
        printf 'INITRAMFS=%s\n' "$OUT"
        exit 0
    fi
fi

# --- archive --------------------------------------------------------------------------
outdir="$(dirname -- "$OUT")"
mkdir -p -- "$outdir"
OUT="$(cd -- "$outdir" && pwd)/$(basename -- "$OUT")"
tmp_out="$(mktemp "${OUT}.tmp.XXXXXX")"
(
    cd "$ROOT"
    find . -mindepth 1 | sed 's#^\./##' | sort \
        | cpio --quiet -o -H newc -R 0:0 --reproducible \
        | gzip -n -9
) >"$tmp_out" || { rm -f -- "$tmp_out"; die "creating the cpio archive failed"; }
chmod 0644 "$tmp_out"
if [[ "$OUT" == "${ICACHE}/"* ]]; then
    cp -- "${STAGE}/manifest" "$(dirname "$OUT")/manifest"
fi
mv -f -- "$tmp_out" "$OUT"
log "wrote $(stat -c %s "$OUT") bytes (content ${HASH}): ${OUT}"
printf 'INITRAMFS=%s\n' "$OUT"
