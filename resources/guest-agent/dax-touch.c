// SPDX-License-Identifier: Apache-2.0
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
#include <unistd.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

#define PAGE 4096UL
#define PM_PRESENT (1ULL << 63)
#define PM_PFN_MASK ((1ULL << 55) - 1)

static int fail(const char *what, const char *path)
{
	fprintf(stderr, "dax-touch: %s %s: %s\n", what, path, strerror(errno));
	return 2;
}

int main(int argc, char **argv)
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
