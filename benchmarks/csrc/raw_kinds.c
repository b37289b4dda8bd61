/* SPDX-License-Identifier: Apache-2.0
 *
 * The physical limit for switching a thread into a UTS, IPC or mount
 * namespace and back: setns(2) pairs in a tight C loop, no Python.
 *
 *   raw_kinds PID ITERATIONS REPEATS
 *
 * Namespaces are those of process PID (fds opened once).  Times are the
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID): steady on a loaded machine,
 * and what the Python side measures too.  Prints "key
 * seconds" lines, seconds per pair, the median of REPEATS batches:
 *   uts        setns(target uts) + setns(home uts)
 *   ipc        setns(target ipc) + setns(home ipc)
 *   mnt        setns(target mnt) + setns(home mnt), after unshare(CLONE_FS)
 *              once (a thread must not share its fs to change mount ns)
 *   mnt_cwd    the same, also putting root and cwd back as they were
 *              (open "/" and "." as O_PATH, fchdir + chroot + fchdir, close)
 *   net        setns(target net) + setns(home net), for comparison
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int target[4], home[4];
static const char *names[4] = { "uts", "ipc", "mnt", "net" };
static const int types[4] = { CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWNET };

static void die(const char *what)
{
	fprintf(stderr, "raw_kinds: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void pair(int k)
{
	if (setns(target[k], types[k]) < 0 || setns(home[k], types[k]) < 0)
		die("setns");
}

static void pair_cwd(int k)
{
	int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);

	if (root < 0 || cwd < 0)
		die("open");
	pair(k);
	if (fchdir(root) < 0 || chroot(".") < 0 || fchdir(cwd) < 0)
		die("restore");
	close(root);
	close(cwd);
}

static double measure(void (*fn)(int), int k, long n, long r)
{
	struct timespec t0, t1;
	double *s = calloc(r, sizeof(*s)), med;

	for (long i = 0; i < n / 10 + 1; i++)
		fn(k);
	for (long j = 0; j < r; j++) {
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
		for (long i = 0; i < n; i++)
			fn(k);
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
		s[j] = ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9) / n;
	}
	qsort(s, r, sizeof(*s), cmp);
	med = s[r / 2];
	free(s);
	return med;
}

int main(int argc, char **argv)
{
	char path[64];
	long n, r;

	if (argc != 4) {
		fprintf(stderr, "usage: raw_kinds PID ITERATIONS REPEATS\n");
		return 2;
	}
	n = atol(argv[2]);
	r = atol(argv[3]);
	for (int k = 0; k < 4; k++) {
		snprintf(path, sizeof(path), "/proc/%s/ns/%s", argv[1], names[k]);
		target[k] = open(path, O_RDONLY | O_CLOEXEC);
		snprintf(path, sizeof(path), "/proc/thread-self/ns/%s", names[k]);
		home[k] = open(path, O_RDONLY | O_CLOEXEC);
		if (target[k] < 0 || home[k] < 0)
			die(path);
	}
	if (unshare(CLONE_FS) < 0)
		die("unshare(CLONE_FS)");
	printf("uts %.9f\n", measure(pair, 0, n, r));
	printf("ipc %.9f\n", measure(pair, 1, n, r));
	printf("mnt %.9f\n", measure(pair, 2, n, r));
	printf("mnt_cwd %.9f\n", measure(pair_cwd, 2, n, r));
	printf("net %.9f\n", measure(pair, 3, n, r));
	return 0;
}
