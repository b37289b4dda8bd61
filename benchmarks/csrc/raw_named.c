/* SPDX-License-Identifier: Apache-2.0
 *
 * The physical limit for named namespaces: the syscall sequence
 * nslib.named.create / delete perform, in C, with no Python at all.
 *
 *   raw_named cycle RUN_DIR N      N x (create, close the handle, delete)
 *   raw_named dance RUN_DIR N      the same, redoing iproute2's run-dir
 *                                  setup (open, flock, MS_SHARED|MS_REC)
 *                                  on every create, as `ip netns add` does
 *   raw_named scale RUN_DIR N      create N names, list and identify at 100
 *                                  names and at N, then delete them all
 *                                  (create/delete: median of the first and
 *                                  of the last 100 operations)
 *
 * create: statx + statmount probe of the run dir (the full setup only when
 * it is not yet a shared mount point of its own), placeholder with
 * O_CREAT|O_EXCL, flock, unshare(CLONE_NEWNET) on a throwaway pthread that
 * hands back an fd of its namespace, bind that fd onto the placeholder
 * through /proc/thread-self/fd, close the placeholder.  delete: umount2
 * MNT_DETACH + unlink.  Prints "key seconds" lines (seconds per operation).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/types.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x00004000U
#endif
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif

static const char *run_dir;
static int always_dance;

static void die(const char *what)
{
	fprintf(stderr, "raw_named: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* -- the run directory ------------------------------------------------ */

struct mnt_id_req {
	__u32 size, spare;
	__u64 mnt_id, param;
};

struct statmount_basic {
	__u32 size, spare1;
	__u64 mask;
	__u32 sb_dev_major, sb_dev_minor;
	__u64 sb_magic;
	__u32 sb_flags, fs_type;
	__u64 mnt_id, mnt_parent_id;
	__u32 mnt_id_old, mnt_parent_id_old;
	__u64 mnt_attr, mnt_propagation, mnt_peer_group, mnt_master, propagate_from;
	__u32 mnt_root, mnt_point;
	__u64 spare2[50];
};

static int statmount_basic(__u64 id, struct statmount_basic *sm)
{
	struct mnt_id_req req = { .size = sizeof(req), .mnt_id = id, .param = 2 };

	memset(sm, 0, sizeof(*sm));
	return syscall(457, &req, sm, sizeof(*sm), 0);
}

/* Is the run dir already a shared mount point in a peer group of its own? */
static int run_dir_ready(void)
{
	struct statmount_basic sm, parent;
	struct statx stx;
	__u64 parent_peer = 0;

	if (statx(AT_FDCWD, run_dir, 0, STATX_MNT_ID_UNIQUE, &stx) < 0)
		return 0;
	if (!(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT))
		return 0;
	if (statmount_basic(stx.stx_mnt_id, &sm) < 0 || !(sm.mnt_propagation & MS_SHARED))
		return 0;
	if (statmount_basic(sm.mnt_parent_id, &parent) == 0 &&
	    (parent.mnt_propagation & MS_SHARED))
		parent_peer = parent.mnt_peer_group;
	return sm.mnt_peer_group != parent_peer;
}

/* iproute2's setup: mkdir, flock, make shared (self-bind the first time). */
static void run_dir_dance(void)
{
	int made = 0, lock;

	if (mkdir(run_dir, 0755) < 0 && errno != EEXIST)
		die("mkdir run dir");
	lock = open(run_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lock < 0)
		die("open run dir");
	flock(lock, LOCK_EX);
	while (mount("", run_dir, "none", MS_SHARED | MS_REC, NULL) < 0) {
		if (errno != EINVAL || made)
			die("make run dir shared");
		if (mount(run_dir, run_dir, "none", MS_BIND | MS_REC, NULL) < 0)
			die("bind run dir");
		if (mount("", run_dir, "none", MS_PRIVATE, NULL) < 0)
			die("make run dir private");
		made = 1;
	}
	close(lock);
}

/* -- create / delete -------------------------------------------------- */

static void *unshare_thread(void *arg)
{
	int *fd = arg;

	*fd = -1;
	if (unshare(CLONE_NEWNET) == 0)
		*fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	return NULL;
}

/* Returns an fd of the new namespace, as nslib's create returns a handle. */
static int create(const char *name)
{
	char path[4096], src[64], dst[64];
	pthread_attr_t attr;
	pthread_t tid;
	int pfd, nsfd;

	if (always_dance || !run_dir_ready())
		run_dir_dance();
	snprintf(path, sizeof(path), "%s/%s", run_dir, name);
	pfd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
	if (pfd < 0)
		die("create placeholder");
	flock(pfd, LOCK_EX);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	if (pthread_create(&tid, &attr, unshare_thread, &nsfd) != 0)
		die("pthread_create");
	pthread_attr_destroy(&attr);
	pthread_join(tid, NULL);
	if (nsfd < 0)
		die("unshare");
	snprintf(src, sizeof(src), "/proc/thread-self/fd/%d", nsfd);
	snprintf(dst, sizeof(dst), "/proc/thread-self/fd/%d", pfd);
	if (mount(src, dst, "none", MS_BIND, NULL) < 0)
		die("bind");
	close(pfd);
	return nsfd;
}

static void delete(const char *name)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s", run_dir, name);
	if (umount2(path, MNT_DETACH) < 0)
		die("umount2");
	if (unlink(path) < 0)
		die("unlink");
}

/* -- list / identify -------------------------------------------------- */

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* readdir + sort, as named.list() returns sorted names. */
static int list(void)
{
	char *names[4096];
	struct dirent *e;
	int n = 0, i;
	DIR *d = opendir(run_dir);

	if (!d)
		die("opendir");
	while ((e = readdir(d)) && n < 4096) {
		if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
			continue;
		names[n++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmpstr);
	for (i = 0; i < n; i++)
		free(names[i]);
	return n;
}

/* Every name whose (st_dev, st_ino) is the namespace's: fstatat each entry. */
static int identify(int nsfd)
{
	struct stat want, st;
	struct dirent *e;
	int found = 0;
	DIR *d;

	if (fstat(nsfd, &want) < 0)
		die("fstat");
	d = opendir(run_dir);
	if (!d)
		die("opendir");
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, 0) == 0 &&
		    st.st_dev == want.st_dev && st.st_ino == want.st_ino)
			found++;
	}
	closedir(d);
	return found;
}

/* -- modes ------------------------------------------------------------ */

static void cycle(long n, const char *key)
{
	char name[64];
	double t0 = now();
	long i;

	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "c%ld", i);
		close(create(name));
		delete(name);
	}
	printf("%s %.9f\n", key, (now() - t0) / n);
}

static void time_lookups(int nsfd, const char *suffix)
{
	const int reps = 20;
	double t0;
	int i;

	t0 = now();
	for (i = 0; i < reps; i++)
		list();
	printf("list_%s %.9f\n", suffix, (now() - t0) / reps);
	t0 = now();
	for (i = 0; i < reps; i++)
		if (identify(nsfd) != 1)
			die("identify found the wrong number of names");
	printf("identify_%s %.9f\n", suffix, (now() - t0) / reps);
}

static int cmpdbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Median of t[from .. from+99]: robust to the odd preempted operation. */
static double median100(const double *t, long from)
{
	double s[100];

	memcpy(s, t + from, sizeof(s));
	qsort(s, 100, sizeof(double), cmpdbl);
	return (s[49] + s[50]) / 2;
}

static void scale(long n)
{
	double *t = calloc(n, sizeof(double)), t0;
	char name[64];
	int first = -1;
	long i;

	if (!t || n < 200)
		die("scale needs N >= 200");
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "s%05ld", i);
		t0 = now();
		int fd = create(name);

		t[i] = now() - t0;
		if (i == 0)
			first = fd;
		else
			close(fd);
		if (i == 99)
			time_lookups(first, "100");
	}
	time_lookups(first, "last");
	close(first);
	printf("create_first100 %.9f\n", median100(t, 0));
	printf("create_last100 %.9f\n", median100(t, n - 100));
	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "s%05ld", i);
		t0 = now();
		delete(name);
		t[i] = now() - t0;
	}
	printf("delete_first100 %.9f\n", median100(t, 0));
	printf("delete_last100 %.9f\n", median100(t, n - 100));
	free(t);
}

int main(int argc, char **argv)
{
	long n;

	if (argc != 4) {
		fprintf(stderr, "usage: raw_named cycle|dance|scale RUN_DIR N\n");
		return 2;
	}
	run_dir = argv[2];
	n = atol(argv[3]);
	if (strcmp(argv[1], "cycle") == 0) {
		cycle(n, "cycle");
	} else if (strcmp(argv[1], "dance") == 0) {
		always_dance = 1;
		cycle(n, "cycle_dance");
	} else if (strcmp(argv[1], "scale") == 0) {
		scale(n);
	} else {
		fprintf(stderr, "unknown mode %s\n", argv[1]);
		return 2;
	}
	return 0;
}
