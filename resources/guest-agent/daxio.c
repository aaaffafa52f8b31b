// SPDX-License-Identifier: Apache-2.0
/*
 * The guest helpers of the integration tests, for what busybox cannot do (mmap, statx,
 * /proc/self/pagemap). One static binary, called by two names:
 *
 *   daxio ...       the memmap policy tests (tests/src/policy_checks.rs, installed as
 *                   /usr/bin/daxio)
 *   dax-touch ...   the pfn checker tests (tests/tests/pfn_checker.rs, installed as
 *                   /usr/bin/dax-touch); also `daxio touch ...`
 *
 * Built static (cc -static -O2 -Wall -Werror) so it runs in the busybox guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif

/* ---- daxio -------------------------------------------------------------------------------- */

/* daxio: the memmap policy tests' guest helper (mmap, statx).
 *   daxio statx PATH                        prints dax=1 or dax=0 (STATX_ATTR_DAX)
 *   daxio put PATH MAPLEN OFFSET SRC [sync] maps [0, MAPLEN) of PATH shared (with "sync":
 *                                           MAP_SHARED_VALIDATE|MAP_SYNC, which only a DAX
 *                                           mapping allows), copies file SRC to OFFSET, unmaps,
 *                                           maps again and compares; prints ok
 *   daxio get PATH MAPLEN OFFSET LEN DEST   maps PATH, copies LEN bytes at OFFSET to file DEST
 *   daxio spin PATH MAPLEN STOP MAXSEC COUNT
 *                                           the hot-remove tests' DAX write load: keeps PATH (a
 *                                           /dev/daxX.Y, or a file on a DAX filesystem, created
 *                                           or extended to MAPLEN) open and [0, MAPLEN) mapped
 *                                           MAP_SHARED_VALIDATE|MAP_SYNC while it writes rounds:
 *                                           round N fills the mapping with byte N & 0xff, msyncs
 *                                           (files), checks the first and last byte of every
 *                                           page and writes N to file COUNT. Stops when file
 *                                           STOP exists (looked at every round) or after MAXSEC
 *                                           seconds, unmaps, closes, then prints
 *                                           @@DAXIO-SPIN path=P rounds=N bad=N end=stop|timeout@@
 *                                           (exit 0 only for end=stop with bad=0)
 * Exit status 0 on success, 1 on a failure (the reason on stderr), 2 on bad usage. */

static int die(const char *what, const char *path)
{
    fprintf(stderr, "daxio: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

static unsigned long long num(const char *s)
{
    return strtoull(s, NULL, 0);
}

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    char *buf;
    if (fd < 0 || fstat(fd, &st) < 0)
        return NULL;
    buf = malloc(st.st_size ? st.st_size : 1);
    if (!buf || read(fd, buf, st.st_size) != st.st_size)
        return NULL;
    close(fd);
    *len = st.st_size;
    return buf;
}

static void *map(int fd, size_t len, int prot, int sync)
{
    int flags = sync ? MAP_SHARED_VALIDATE | MAP_SYNC : MAP_SHARED;
    return mmap(NULL, len, prot, flags, fd, 0);
}

static int fits(size_t off, size_t len, size_t maplen)
{
    if (off + len <= maplen)
        return 1;
    fprintf(stderr, "daxio: %zu bytes at %zu do not fit in %zu\n", len, off, maplen);
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int spin(const char *path, size_t maplen, const char *stop, double maxsec,
                const char *count)
{
    unsigned long long rounds = 0, bad = 0;
    double start = now();
    int stopped = 0, cfd, fd = open(path, O_RDWR | O_CREAT, 0644);
    volatile unsigned char *p;
    struct stat st;
    char buf[32];

    if (fd < 0 || fstat(fd, &st) < 0)
        return die("opening", path);
    if (S_ISREG(st.st_mode) && (size_t)st.st_size < maplen) {
        errno = posix_fallocate(fd, 0, maplen);
        if (errno)
            return die("fallocate", path);
    }
    cfd = open(count, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (cfd < 0)
        return die("creating", count);
    p = map(fd, maplen, PROT_READ | PROT_WRITE, 1);
    if (p == MAP_FAILED)
        return die("mmap MAP_SYNC (not a DAX mapping?)", path);
    while (!(stopped = access(stop, F_OK) == 0) && now() - start < maxsec) {
        unsigned char b = ++rounds & 0xff;
        int len;

        memset((void *)p, b, maplen);
        if (S_ISREG(st.st_mode) && msync((void *)p, maplen, MS_SYNC) < 0)
            return die("msync", path);
        for (size_t off = 0; off < maplen; off += 4096)
            if (p[off] != b || p[off + 4095] != b)
                bad++;
        /* the count only grows, so each write covers the last */
        len = snprintf(buf, sizeof(buf), "%llu\n", rounds);
        if (pwrite(cfd, buf, len, 0) != len)
            return die("writing", count);
    }
    if (munmap((void *)p, maplen) < 0)
        return die("munmap", path);
    close(fd);
    close(cfd);
    printf("@@DAXIO-SPIN path=%s rounds=%llu bad=%llu end=%s@@\n", path, rounds, bad,
           stopped ? "stop" : "timeout");
    return stopped && !bad ? 0 : 1;
}

static int daxio_main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "statx")) {
        struct statx st;
        if (statx(AT_FDCWD, argv[2], 0, STATX_BASIC_STATS, &st) < 0)
            return die("statx", argv[2]);
        if (!(st.stx_attributes_mask & STATX_ATTR_DAX)) {
            fprintf(stderr, "daxio: statx %s: the kernel does not report STATX_ATTR_DAX\n",
                    argv[2]);
            return 1;
        }
        printf("dax=%d\n", (st.stx_attributes & STATX_ATTR_DAX) ? 1 : 0);
        return 0;
    }
    if ((argc == 6 || argc == 7) && !strcmp(argv[1], "put")) {
        size_t maplen = num(argv[3]), off = num(argv[4]), len;
        int sync = argc == 7 && !strcmp(argv[6], "sync");
        char *src = slurp(argv[5], &len), *p;
        int fd = open(argv[2], O_RDWR);
        if (!src)
            return die("reading", argv[5]);
        if (fd < 0)
            return die("opening", argv[2]);
        if (!fits(off, len, maplen))
            return 1;
        p = map(fd, maplen, PROT_READ | PROT_WRITE, sync);
        if (p == MAP_FAILED)
            return die(sync ? "mmap MAP_SYNC" : "mmap", argv[2]);
        memcpy(p + off, src, len);
        if (munmap(p, maplen) < 0)
            return die("munmap", argv[2]);
        p = map(fd, maplen, PROT_READ, 0);
        if (p == MAP_FAILED)
            return die("mmap again", argv[2]);
        if (memcmp(p + off, src, len)) {
            fprintf(stderr, "daxio: %s: read back differs\n", argv[2]);
            return 1;
        }
        munmap(p, maplen);
        close(fd);
        printf("ok\n");
        return 0;
    }
    if (argc == 7 && !strcmp(argv[1], "get")) {
        size_t maplen = num(argv[3]), off = num(argv[4]), len = num(argv[5]);
        int fd = open(argv[2], O_RDONLY), out;
        char *p;
        if (fd < 0)
            return die("opening", argv[2]);
        if (!fits(off, len, maplen))
            return 1;
        p = map(fd, maplen, PROT_READ, 0);
        if (p == MAP_FAILED)
            return die("mmap", argv[2]);
        out = open(argv[6], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || write(out, p + off, len) != (ssize_t)len)
            return die("writing", argv[6]);
        close(out);
        return 0;
    }
    if (argc == 7 && !strcmp(argv[1], "spin"))
        return spin(argv[2], num(argv[3]), argv[4], strtod(argv[5], NULL), argv[6]);
    fprintf(stderr, "usage: daxio statx PATH | put PATH MAPLEN OFFSET SRC [sync] | "
                    "get PATH MAPLEN OFFSET LEN DEST | spin PATH MAPLEN STOP MAXSEC COUNT\n");
    return 2;
}

/* ---- dax-touch ---------------------------------------------------------------------------- */

/*
 * dax-touch: a guest workload that writes through DAX and says which pfns it touched.
 *
 *   dax-touch PATH BYTES [SEED]
 *
 * Maps BYTES of PATH (a /dev/daxX.Y, or a file on a filesystem mounted with -o dax, which is
 * created or extended to BYTES) with MAP_SHARED_VALIDATE | MAP_SYNC, which the kernel only
 * grants for DAX mappings; stores SEED ^ page-index into the first 8 bytes of every 4 KiB
 * page and a marker into the last 8, msyncs (files), reads everything back, and looks each page up in
 * /proc/self/pagemap (pfns need CAP_SYS_ADMIN). Prints one line
 *
 *   @@DAX-TOUCH path=P bytes=N pages=N bad=N pfn_min=0x.. pfn_max=0x.. pfn_missing=N@@
 *
 * and exits 0 when every page read back what was written and had a pfn, 1 otherwise, 2 on
 * usage or system-call errors. Built static (cc -static -O2) so it runs in the busybox guest.
 */

#define PAGE 4096UL
#define PM_PRESENT (1ULL << 63)
#define PM_PFN_MASK ((1ULL << 55) - 1)

static int fail(const char *what, const char *path)
{
	fprintf(stderr, "dax-touch: %s %s: %s\n", what, path, strerror(errno));
	return 2;
}

static int dax_touch_main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: dax-touch PATH BYTES [SEED]\n");
		return 2;
	}
	const char *path = argv[1];
	char *end;
	uint64_t bytes = strtoull(argv[2], &end, 0);
	uint64_t seed = argc == 4 ? strtoull(argv[3], NULL, 0) : 0x5eed;

	if (*end || bytes == 0 || bytes % PAGE) {
		fprintf(stderr, "dax-touch: BYTES must be a non-zero multiple of 4096\n");
		return 2;
	}
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		return fail("open", path);
	struct stat st;
	if (fstat(fd, &st))
		return fail("stat", path);
	if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < bytes) {
		errno = posix_fallocate(fd, 0, bytes);
		if (errno)
			return fail("fallocate", path);
	}
	volatile uint64_t *map = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
				      MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
	if (map == MAP_FAILED)
		return fail("mmap(MAP_SYNC) (not a DAX mapping?)", path);

	uint64_t pages = bytes / PAGE, bad = 0, missing = 0;
	uint64_t pfn_min = UINT64_MAX, pfn_max = 0;
	const uint64_t words = PAGE / sizeof(uint64_t);

	for (uint64_t i = 0; i < pages; i++) {
		map[i * words] = seed ^ i;
		map[i * words + words - 1] = ~(seed ^ i);
	}
	/* device-dax has no fsync; its MAP_SYNC stores need no msync to reach the media path */
	if (S_ISREG(st.st_mode) && msync((void *)map, bytes, MS_SYNC))
		return fail("msync", path);
	for (uint64_t i = 0; i < pages; i++)
		if (map[i * words] != (seed ^ i) || map[i * words + words - 1] != ~(seed ^ i))
			bad++;

	int pm = open("/proc/self/pagemap", O_RDONLY);
	if (pm < 0)
		return fail("open", "/proc/self/pagemap");
	uint64_t first = (uintptr_t)map / PAGE, buf[512];
	for (uint64_t i = 0; i < pages; i += 512) {
		uint64_t n = pages - i < 512 ? pages - i : 512;
		ssize_t got = pread(pm, buf, n * 8, (first + i) * 8);
		if (got != (ssize_t)(n * 8))
			return fail("read", "/proc/self/pagemap");
		for (uint64_t j = 0; j < n; j++) {
			uint64_t pfn = buf[j] & PM_PFN_MASK;
			if (!(buf[j] & PM_PRESENT) || !pfn) {
				missing++;
				continue;
			}
			pfn_min = pfn < pfn_min ? pfn : pfn_min;
			pfn_max = pfn > pfn_max ? pfn : pfn_max;
		}
	}
	printf("@@DAX-TOUCH path=%s bytes=%" PRIu64 " pages=%" PRIu64 " bad=%" PRIu64
	       " pfn_min=0x%" PRIx64 " pfn_max=0x%" PRIx64 " pfn_missing=%" PRIu64 "@@\n",
	       path, bytes, pages, bad, missing == pages ? 0 : pfn_min, pfn_max, missing);
	munmap((void *)map, bytes);
	close(pm);
	close(fd);
	return bad || missing ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *name = strrchr(argv[0], '/');

	name = name ? name + 1 : argv[0];
	if (!strcmp(name, "dax-touch"))
		return dax_touch_main(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "touch"))
		return dax_touch_main(argc - 1, argv + 1);
	return daxio_main(argc, argv);
}
