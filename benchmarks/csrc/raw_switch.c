/* SPDX-License-Identifier: Apache-2.0
 *
 * The physical limit for switching: setns(2) pairs and setns+socket+setns
 * sequences in a tight C loop, with no Python at all.
 *
 *   raw_switch ITERATIONS REPEATS [NSPATH]
 *
 * Without NSPATH it makes its own namespace (unshare on a throwaway thread,
 * so the measuring thread never changes for good).  Prints "key seconds"
 * lines, seconds per operation, the median of REPEATS batches, in the
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID: steady on a loaded machine,
 * where wall time mostly measures the wait for a core; the Python side
 * measures the same):
 *   pair        setns(target) + setns(home)
 *   pair_check  the same with fstat(home) before moving back: the identity
 *               check nslib makes so that a home fd closed and reused behind
 *               its back never takes the thread elsewhere
 *   socket      setns(target) + socket() + setns(home) + close()
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int target_fd = -1;

static void die(const char *what)
{
	fprintf(stderr, "raw_switch: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *make_ns(void *arg)
{
	(void)arg;
	if (unshare(CLONE_NEWNET) < 0)
		die("unshare");
	target_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (target_fd < 0)
		die("open new namespace");
	return NULL;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double batch_pair(int home, long n)
{
	double t0 = now();

	for (long i = 0; i < n; i++) {
		if (setns(target_fd, CLONE_NEWNET) < 0)
			die("setns target");
		if (setns(home, CLONE_NEWNET) < 0)
			die("setns home");
	}
	return (now() - t0) / n;
}

static double batch_pair_check(int home, long n)
{
	struct stat st;
	double t0 = now();

	for (long i = 0; i < n; i++) {
		if (setns(target_fd, CLONE_NEWNET) < 0)
			die("setns target");
		if (fstat(home, &st) < 0)
			die("fstat home");
		if (setns(home, CLONE_NEWNET) < 0)
			die("setns home");
	}
	return (now() - t0) / n;
}

static double batch_socket(int home, long n)
{
	double t0 = now();

	for (long i = 0; i < n; i++) {
		int s;

		if (setns(target_fd, CLONE_NEWNET) < 0)
			die("setns target");
		s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (s < 0)
			die("socket");
		if (setns(home, CLONE_NEWNET) < 0)
			die("setns home");
		close(s);
	}
	return (now() - t0) / n;
}

static double median(double (*fn)(int, long), int home, long n, int repeats)
{
	double *v = calloc(repeats, sizeof(*v));
	double m;

	if (!v)
		die("calloc");
	fn(home, n / 10 + 1);	/* warm up */
	for (int r = 0; r < repeats; r++)
		v[r] = fn(home, n);
	qsort(v, repeats, sizeof(*v), cmp);
	m = v[repeats / 2];
	free(v);
	return m;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 20000;
	int repeats = argc > 2 ? atoi(argv[2]) : 5;
	int home;
	pthread_t tid;

	if (n <= 0 || repeats <= 0) {
		fprintf(stderr, "usage: raw_switch ITERATIONS REPEATS [NSPATH]\n");
		return 2;
	}
	if (argc > 3) {
		target_fd = open(argv[3], O_RDONLY | O_CLOEXEC);
		if (target_fd < 0)
			die(argv[3]);
	} else {
		if (pthread_create(&tid, NULL, make_ns, NULL) != 0)
			die("pthread_create");
		pthread_join(tid, NULL);
	}
	home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (home < 0)
		die("open home");
	printf("pair %.9e\n", median(batch_pair, home, n, repeats));
	printf("pair_check %.9e\n", median(batch_pair_check, home, n, repeats));
	printf("socket %.9e\n", median(batch_socket, home, n, repeats));
	return 0;
}
