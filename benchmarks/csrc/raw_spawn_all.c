/* SPDX-License-Identifier: Apache-2.0
 *
 * The physical limit for spawning a program in every namespace of a
 * process: from a small C process, vfork a child that joins the target's
 * namespaces (fds opened once, outside the loop), vforks again for the PID
 * namespace, and execs; wait for it.  No Python at all.
 *
 *   raw_spawn_all PID PROGRAM ITERATIONS REPEATS
 *
 * Prints "spawn seconds": seconds per spawn+wait, the median of REPEATS
 * batches.  Kinds that are the caller's own (user, time) are skipped, as
 * nsenter -a and nslib do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const struct {
	const char *name;
	int type;
} kinds[] = {
	{ "cgroup", CLONE_NEWCGROUP }, { "ipc", CLONE_NEWIPC }, { "uts", CLONE_NEWUTS },
	{ "net", CLONE_NEWNET }, { "pid", CLONE_NEWPID }, { "mnt", CLONE_NEWNS },
};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))

static int fds[NKINDS];
static char *argv_[2];

static void die(const char *what)
{
	fprintf(stderr, "raw_spawn_all: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void once(void)
{
	pid_t pid = vfork();
	int status;

	if (pid < 0)
		die("vfork");
	if (pid == 0) {
		for (size_t i = 0; i < NKINDS; i++)
			if (setns(fds[i], kinds[i].type) < 0)
				_exit(126);
		pid_t inner = vfork();	/* the PID namespace applies to children */
		if (inner == 0) {
			execv(argv_[0], argv_);
			_exit(127);
		}
		if (inner > 0)
			waitpid(inner, &status, 0);
		_exit(inner > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : 125);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		die("child failed");
}

int main(int argc, char **argv)
{
	struct timespec t0, t1;
	char path[64];
	long n, r, pid;
	double *samples;

	if (argc != 5) {
		fprintf(stderr, "usage: raw_spawn_all PID PROGRAM ITERATIONS REPEATS\n");
		return 2;
	}
	pid = atol(argv[1]);
	argv_[0] = argv[2];
	n = atol(argv[3]);
	r = atol(argv[4]);
	for (size_t i = 0; i < NKINDS; i++) {
		snprintf(path, sizeof(path), "/proc/%ld/ns/%s", pid, kinds[i].name);
		fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0)
			die(path);
	}
	samples = calloc(r, sizeof(*samples));
	once();
	for (long j = 0; j < r; j++) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (long i = 0; i < n; i++)
			once();
		clock_gettime(CLOCK_MONOTONIC, &t1);
		samples[j] = ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9) / n;
	}
	qsort(samples, r, sizeof(*samples), cmp);
	printf("spawn %.9f\n", samples[r / 2]);
	return 0;
}
