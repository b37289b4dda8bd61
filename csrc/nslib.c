/* SPDX-License-Identifier: Apache-2.0
 *
 * nslib's C core.  Every function follows the libc convention (-1 and
 * errno) unless it documents a code of its own, never touches the Python C
 * API, and is called by cffi with the GIL released.  Namespaces are per
 * thread, so everything here means the *calling thread*.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/nsfs.h>

#define NSLIB_ABI 10

#define NSLIB_ENOTNS -2		/* the file is not a namespace at all */
#define NSLIB_EWRONGTYPE -3	/* a namespace, but not a network one */
#define NSLIB_EPOISONED -4	/* a restore failed on this thread earlier */
#define NSLIB_EORDER -5		/* leave() of a switch that is not innermost */
#define NSLIB_ERESTORE -6	/* the restore failed: the thread is poisoned */
#define NSLIB_EUNWOUND -7	/* a block ended past a switch made inside it */
#define NSLIB_EHOME -8		/* the fd to return to was closed or replaced */
#define NSLIB_ETHREAD -9	/* a revert called on another thread */

#define NSLIB_SWITCH 0		/* kinds of enter: switch_to() */
#define NSLIB_BLOCK 1		/* an entered() block */

#define NSLIB_SELF "/proc/thread-self/ns/net"
#define NSLIB_MAX_DEPTH 64

/*
 * Per-thread switching state, kept in C so that a switch is one call and
 * nothing can leak between steps, and so that one Python object may be
 * used by several threads at once: the state is the thread's, not the
 * object's.
 *
 * `e[i]` describes the enter that took the thread to depth i+1: `saved`
 * is where the thread was before it.  Opening /proc/thread-self/ns/net
 * costs more than the two setns() of a switch, so the thread's home (depth
 * 0) is opened once per thread and kept; a pthread key destructor closes
 * it when the thread exits.  A nested enter opens the current namespace
 * afresh rather than trusting the outer target's fd, which the caller may
 * have closed (and the kernel reused).
 *
 * Every fd kept here is trusted by identity, not by number: its (st_dev,
 * st_ino) is recorded when it is opened and checked (one fstat, ~0.1 us)
 * before the thread is moved back through it.  Something else in the
 * process may close the number (a closerange after fork, a double close)
 * and the kernel may hand it to another namespace; setns() would then
 * silently "return" the thread there.
 */
struct nslib_entry {
	int saved;		/* fd to go back to (the home fd at index 0) */
	int own;		/* fd + 1 this switch owns and closes, 0: none */
	int block;		/* NSLIB_BLOCK or NSLIB_SWITCH */
	dev_t dev, own_dev;
	ino_t ino, own_ino;
	long long serial;
	/* Every kind (see nslib_kinds): */
	int k;			/* index into nslib_kind_type; 0: net */
	int home;		/* saved is the thread's cached home for k: never closed */
	int start;		/* index of the first entry of its group (one enter) */
	int root, cwd;		/* mnt: O_PATH fds of root and cwd before, else -1 */
	dev_t root_dev, cwd_dev;
	ino_t root_ino, cwd_ino;
};

/*
 * The kinds a single thread may enter and leave: net (the home above),
 * uts, ipc, cgroup, and mnt once the thread has its own filesystem
 * attributes (unshare(CLONE_FS), once per thread).  USER needs a
 * single-threaded caller and PID and TIME apply to children only: those
 * are refused in Python, which points to nslib.spawn.
 */
#define NSLIB_KINDS 5
#define NSLIB_KMNT 4
#define NSLIB_GROUPED 2		/* e[].block of an entry after the first of a group */
static const int nslib_kind_type[NSLIB_KINDS] = {
	CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWCGROUP, CLONE_NEWNS,
};
static const char *const nslib_kind_name[NSLIB_KINDS] = {
	"net", "uts", "ipc", "cgroup", "mnt",
};

struct nslib_khome {
	int fd;			/* fd + 1, 0: not open */
	dev_t dev;
	ino_t ino;
};

struct nslib_thread {
	int home;		/* fd + 1, so that zeroed TLS means "not open" */
	int depth;
	int poisoned;
	int last;		/* the depth the latest enter reached, 0: failed */
	dev_t home_dev;
	ino_t home_ino;
	long long last_serial;
	long long next;		/* serial numbers, so a stale revert is known */
	int count[NSLIB_KINDS];	/* open entries per kind */
	struct nslib_khome kh[NSLIB_KINDS];	/* cached homes; [0] unused (net: home) */
	int fs_private;		/* unshare(CLONE_FS) done: mnt may be entered */
	int failed_type;	/* the CLONE_NEW* the latest failed group enter could not join */
	int nsdir;		/* fd + 1 of this task's /proc/.../ns directory */
	dev_t nsdir_dev;
	ino_t nsdir_ino;
	struct nslib_entry e[NSLIB_MAX_DEPTH];
};

static __thread struct nslib_thread nslib_t;
static pthread_key_t nslib_key;
static pthread_once_t nslib_key_once = PTHREAD_ONCE_INIT;

/* Whether fd still is the file whose identity was recorded. */
static int nslib_same(int fd, dev_t dev, ino_t ino)
{
	struct stat st;

	return fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

/* Close fd only if it still is ours: never close someone else's number. */
static void nslib_close_if(int fd, dev_t dev, ino_t ino)
{
	if (nslib_same(fd, dev, ino))
		close(fd);
}

/* Drop entry i's fds (not its saved fd at index 0: that is the home). */
static void nslib_drop(struct nslib_thread *t, int i)
{
	struct nslib_entry *e = &t->e[i];

	if (!e->home)
		nslib_close_if(e->saved, e->dev, e->ino);
	if (e->own > 0)
		nslib_close_if(e->own - 1, e->own_dev, e->own_ino);
	if (e->root >= 0)
		nslib_close_if(e->root, e->root_dev, e->root_ino);
	if (e->cwd >= 0)
		nslib_close_if(e->cwd, e->cwd_dev, e->cwd_ino);
	e->root = e->cwd = -1;
	e->own = 0;
	e->serial = 0;
	t->count[e->k]--;
}

static void nslib_forget_home(struct nslib_thread *t)
{
	if (t->home > 0)
		nslib_close_if(t->home - 1, t->home_dev, t->home_ino);
	t->home = 0;
}

/* Forget the cached home of kind k (> 0), closing it if it still is ours. */
static void nslib_forget_khome(struct nslib_thread *t, int k)
{
	struct nslib_khome *h = &t->kh[k];

	if (h->fd > 0)
		nslib_close_if(h->fd - 1, h->dev, h->ino);
	h->fd = 0;
}

static void nslib_forget_nsdir(struct nslib_thread *t)
{
	if (t->nsdir > 0)
		nslib_close_if(t->nsdir - 1, t->nsdir_dev, t->nsdir_ino);
	t->nsdir = 0;
}

/* Forget every cached home of a kind with no open entry. */
static void nslib_forget_idle_homes(struct nslib_thread *t)
{
	int k;

	if (t->count[0] == 0)
		nslib_forget_home(t);
	for (k = 1; k < NSLIB_KINDS; k++)
		if (t->count[k] == 0)
			nslib_forget_khome(t, k);
}

static void nslib_thread_exit(void *arg)
{
	struct nslib_thread *t = arg;

	while (t->depth > 0)
		nslib_drop(t, --t->depth);
	nslib_forget_idle_homes(t);
	nslib_forget_nsdir(t);
}

/*
 * In a forked child the home fd is a number inherited from the parent, and
 * children routinely close every fd they did not open (daemons do).  The
 * forking thread is the child's only thread: at depth 0 it forgets its home
 * and reopens it on the next switch.
 */
static void nslib_atfork_child(void)
{
	struct nslib_thread *t = &nslib_t;

	nslib_forget_idle_homes(t);
	nslib_forget_nsdir(t);	/* it is the parent's task's directory */
}

static int nslib_key_err;

static void nslib_make_key(void)
{
	nslib_key_err = pthread_key_create(&nslib_key, nslib_thread_exit);
	if (nslib_key_err == 0)
		nslib_key_err = pthread_atfork(NULL, NULL, nslib_atfork_child);
}

/*
 * The cached home is only right while nslib alone moves the thread.  When
 * the thread moves for good outside a switch (join, unshare, a raw setns),
 * its home is wherever it now is: forget the old one.  Inside a switch the
 * saved fds still say where each leave goes back to.
 */
static void nslib_moved(void)
{
	struct nslib_thread *t = &nslib_t;

	if (t->count[0] == 0)
		nslib_forget_home(t);
}

/* The same for every kind in `flags` (a setns or unshare outside a switch). */
static void nslib_moved_kinds(int flags)
{
	struct nslib_thread *t = &nslib_t;
	int k;

	if ((flags & CLONE_NEWNET) && t->count[0] == 0)
		nslib_forget_home(t);
	for (k = 1; k < NSLIB_KINDS; k++)
		if ((flags & nslib_kind_type[k]) && t->count[k] == 0)
			nslib_forget_khome(t, k);
	if (flags & CLONE_FS)
		t->fs_private = 1;
}

static int nslib_setns(int fd, int nstype)
{
	int rc = setns(fd, nstype);

	if (rc == 0)
		nslib_moved_kinds(nstype ? nstype : CLONE_NEWNET | CLONE_NEWUTS |
				  CLONE_NEWIPC | CLONE_NEWCGROUP | CLONE_NEWNS);
	return rc;
}

static int nslib_unshare(int flags)
{
	int rc = unshare(flags);

	if (rc == 0)
		nslib_moved_kinds(flags);
	return rc;
}

static int nslib_mount(const char *src, const char *target, const char *fstype,
		       unsigned long flags, const char *data)
{
	return mount(src, target, fstype, flags, data);
}

static int nslib_umount2(const char *target, int flags)
{
	return umount2(target, flags);
}

/*
 * pidfd_open(2) and pidfd_getfd(2) by number: glibc 2.36 has no wrapper for
 * pidfd_getfd, and both numbers are the same on every architecture.  The
 * fds they return are close-on-exec (pidfd_getfd sets it itself).
 */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static int nslib_pidfd_open(int pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int nslib_pidfd_getfd(int pidfd, int targetfd)
{
	return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, 0);
}

/*
 * Fd boxes.  Every function that makes an fd for Python writes it into an
 * `int *out` that Python allocated *before* the call, with this function as
 * its cffi destructor.  A KeyboardInterrupt raised as the call returns (the
 * interpreter checks for signals right after a C call) then loses nothing:
 * the box still owns the fd and closes it when it is collected.
 */
static void nslib_fdbox_close(int *box)
{
	int fd = *box;

	*box = -1;
	if (fd >= 0)
		close(fd);
}

/* A close-on-exec duplicate, numbered 3 or above (never a standard stream). */
static int nslib_dup(int fd, int *out)
{
	int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);

	if (dup >= 0)
		*out = dup;
	return dup;
}

static int nslib_key_ready(struct nslib_thread *t)
{
	pthread_once(&nslib_key_once, nslib_make_key);
	if (nslib_key_err != 0 || pthread_setspecific(nslib_key, t) != 0) {
		errno = nslib_key_err ? nslib_key_err : ENOMEM;
		return -1;
	}
	return 0;
}

/*
 * This task's /proc/<pid>/task/<tid>/ns directory, opened once per thread.
 * Opening a namespace through it works wherever the thread is: inside a
 * container's mount namespace, /proc/thread-self may not exist (its /proc
 * shows another PID namespace).
 */
static int nslib_nsdir(struct nslib_thread *t)
{
	struct stat st;
	int fd;

	if (t->nsdir > 0 && nslib_same(t->nsdir - 1, t->nsdir_dev, t->nsdir_ino))
		return t->nsdir - 1;
	t->nsdir = 0;	/* closed and reused by someone: not ours to close */
	fd = open("/proc/thread-self/ns", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || nslib_key_ready(t) < 0) {
		int err = errno;

		close(fd);
		errno = err;
		return -1;
	}
	t->nsdir = fd + 1;
	t->nsdir_dev = st.st_dev;
	t->nsdir_ino = st.st_ino;
	return fd;
}

/* An fd of the calling thread's namespace of kind k (0: net). */
static int nslib_open_self(struct nslib_thread *t, int k)
{
	int dir = nslib_nsdir(t);

	if (dir < 0)
		return -1;
	return openat(dir, nslib_kind_name[k], O_RDONLY | O_CLOEXEC);
}

static int nslib_open_self_id(struct nslib_thread *t, int k, dev_t *dev, ino_t *ino)
{
	struct stat st;
	int fd = nslib_open_self(t, k);

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0) {
		int err = errno;

		close(fd);
		errno = err;
		return -1;
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	return fd;
}

/* The calling thread's namespace; /proc/self would be the main thread's. */
static int nslib_open_current(int *out)
{
	int fd = nslib_open_self(&nslib_t, 0);

	if (fd >= 0)
		*out = fd;
	return fd;
}

/*
 * 0 if fd is a network namespace, NSLIB_ENOTNS / NSLIB_EWRONGTYPE if not.
 * The filesystem is checked first so that the ioctl only ever reaches nsfs,
 * never some device driver that might give the number a meaning.
 */
static int nslib_check_netns(int fd, int *nstype)
{
	struct statfs sfs;
	int type;

	*nstype = 0;
	if (fstatfs(fd, &sfs) < 0)
		return -1;
	if (sfs.f_type != NSFS_MAGIC)
		return NSLIB_ENOTNS;
	type = ioctl(fd, NS_GET_NSTYPE);
	*nstype = type < 0 ? 0 : type;
	if (type < 0)
		return errno == EBADF ? -1 : NSLIB_ENOTNS;
	return type == CLONE_NEWNET ? 0 : NSLIB_EWRONGTYPE;
}

/*
 * open + check in one call, so a rejected file never leaks its fd.
 * O_NONBLOCK and O_NOCTTY: a wrong path naming a FIFO or a terminal must
 * fail the check, not hang or acquire a controlling terminal.
 */
static int nslib_open_netns(int dirfd, const char *path, int *nstype, int *out)
{
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	int rc, err;

	*nstype = 0;
	if (fd < 0)
		return -1;
	rc = nslib_check_netns(fd, nstype);
	if (rc != 0) {
		err = errno;
		close(fd);
		errno = err;
		return rc;
	}
	*out = fd;
	return fd;
}

/*
 * The thread's home fd, opened on first use.  It is not checked here: the
 * check costs a syscall, so it is made once per switch, where it matters,
 * right before the thread is moved back through the fd (nslib_back_to).
 */
static int nslib_home(struct nslib_thread *t)
{
	struct stat st;
	int fd;

	if (t->home > 0)
		return t->home - 1;
	fd = open(NSLIB_SELF, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0)
		goto fail;
	pthread_once(&nslib_key_once, nslib_make_key);
	if (nslib_key_err != 0 || pthread_setspecific(nslib_key, t) != 0) {
		errno = nslib_key_err ? nslib_key_err : ENOMEM;
		goto fail;
	}
	t->home = fd + 1;
	t->home_dev = st.st_dev;
	t->home_ino = st.st_ino;
	return fd;
fail:
	close(fd);
	return -1;
}

/*
 * The cached home fd is no longer the home (closed and its number reused).
 * Most threads' home is the process's main namespace: if /proc/self's is
 * the recorded home, reopen it there and carry on.  Otherwise nothing says
 * where home is: -1, and the caller poisons the thread.
 */
static int nslib_reopen_home(struct nslib_thread *t, struct nslib_entry *e)
{
	struct stat st;
	int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || st.st_dev != t->home_dev || st.st_ino != t->home_ino) {
		close(fd);
		return -1;
	}
	t->home = fd + 1;	/* the old number is not ours: never close it */
	e->saved = fd;
	return fd;
}

/*
 * Join `target`, remembering where the thread was.  Returns the new depth.
 * On any failure nothing is pushed, nothing leaks and the thread has not
 * moved.  On success the switch takes the fd in *own (if own is not NULL
 * and *own >= 0) and closes it when the switch ends; *own becomes -1.
 */
static int nslib_enter_(struct nslib_thread *t, int target, int kind, int *own)
{
	struct nslib_entry *e;
	struct stat st;
	int prev, err;

	t->last = 0;
	if (t->poisoned)
		return NSLIB_EPOISONED;
	if (t->depth >= NSLIB_MAX_DEPTH) {
		errno = EOVERFLOW;
		return -1;
	}
	e = &t->e[t->depth];
	e->home = t->count[0] == 0;
	if (e->home) {
		prev = nslib_home(t);
		if (prev < 0)
			return prev;
		e->dev = t->home_dev;
		e->ino = t->home_ino;
	} else {
		prev = nslib_open_self(t, 0);
		if (prev < 0)
			return -1;
		if (fstat(prev, &st) < 0)
			goto fail;
		e->dev = st.st_dev;
		e->ino = st.st_ino;
	}
	if (own && *own >= 0 && fstat(*own, &st) < 0)
		goto fail;
	if (setns(target, CLONE_NEWNET) < 0)
		goto fail;
	e->saved = prev;
	e->block = kind;
	e->own = 0;
	if (own && *own >= 0) {
		e->own = *own + 1;
		e->own_dev = st.st_dev;
		e->own_ino = st.st_ino;
		*own = -1;
	}
	e->k = 0;
	e->start = t->depth;
	e->root = e->cwd = -1;
	t->count[0]++;
	e->serial = ++t->next;
	t->last_serial = e->serial;
	t->last = ++t->depth;
	return t->depth;
fail:
	err = errno;
	if (!e->home)
		close(prev);
	errno = err;
	return -1;
}

/*
 * entered() of a network namespace handle, the hot path: nslib_enter(target,
 * NSLIB_BLOCK, NULL) with one argument, which cffi passes without building
 * an argument tuple.  A closed handle (-1) fails with EBADF before anything.
 */
static int nslib_enter_block(int target)
{
	if (target < 0) {
		nslib_t.last = 0;
		errno = EBADF;
		return -1;
	}
	return nslib_enter_(&nslib_t, target, NSLIB_BLOCK, NULL);
}

/* Enter for switch_to() (kind NSLIB_SWITCH) or entered() (NSLIB_BLOCK). */
static int nslib_enter(int target, int kind, int *own)
{
	return nslib_enter_(&nslib_t, target, kind, own);
}

/*
 * Move the thread back to where it was before the enter that took it to
 * depth i+1, ending that switch and every switch opened inside it.  The fd
 * to go back through is checked first: if it is no longer what was saved,
 * the thread stays where it is, poisoned, and NSLIB_EHOME says why.
 */
static int nslib_restore(struct nslib_thread *t, struct nslib_entry *e)
{
	if (!nslib_same(e->saved, e->dev, e->ino) &&
	    !(e->home && e->k == 0 && nslib_reopen_home(t, e) >= 0)) {
		if (e->home) {	/* not ours any more: never close it */
			if (e->k == 0)
				t->home = 0;
			else
				t->kh[e->k].fd = 0;
		}
		e->saved = -1;
		errno = EBADF;
		return NSLIB_EHOME;
	}
	if (setns(e->saved, nslib_kind_type[e->k]) < 0)
		return -1;
	if (e->k != NSLIB_KMNT)
		return 0;
	/*
	 * Joining a mount namespace moves root and cwd to its root: put back
	 * the ones the thread had (its own: it unshared CLONE_FS).
	 */
	if (!nslib_same(e->root, e->root_dev, e->root_ino) ||
	    !nslib_same(e->cwd, e->cwd_dev, e->cwd_ino)) {
		errno = EBADF;
		return NSLIB_EHOME;
	}
	if (fchdir(e->root) < 0 || chroot(".") < 0 || fchdir(e->cwd) < 0)
		return -1;
	close(e->root);	/* just checked: ours */
	close(e->cwd);
	e->root = e->cwd = -1;
	return 0;
}

/*
 * Each kind moved by the entries from i up goes back to where the first of
 * them found it.  All are tried even if one fails: a thread is left in as
 * few foreign namespaces as possible, and poisoned.
 */
static int nslib_back_to(struct nslib_thread *t, int i)
{
	int j, r, rc = 0, err = 0, done = 0;

	for (j = i; j < t->depth; j++) {
		struct nslib_entry *e = &t->e[j];

		if (done & (1 << e->k))
			continue;
		done |= 1 << e->k;
		r = nslib_restore(t, e);
		if (r < 0 && rc == 0) {
			rc = r;
			err = errno;
		}
	}
	while (t->depth > i)
		nslib_drop(t, --t->depth);	/* a saved fd of -1 fails its check */
	if (rc < 0) {
		t->poisoned = 1;
		errno = err;
		return rc;
	}
	return 0;
}

/*
 * Undo the innermost enter, which returned `depth` and, when `serial` is
 * not 0, had that serial number; a leave out of order changes nothing and
 * returns NSLIB_EORDER.  If the kernel refuses to take the thread back, the
 * thread is poisoned: every later enter fails with NSLIB_EPOISONED rather
 * than run code in the wrong namespace.
 */
static int nslib_leave(int depth, long long serial)
{
	struct nslib_thread *t = &nslib_t;

	if (t->depth <= 0 || t->depth != depth ||
	    (serial && t->e[depth - 1].serial != serial))
		return NSLIB_EORDER;
	return nslib_back_to(t, t->e[depth - 1].start);
}

/*
 * Undo the switch that returned `depth` and every switch still open inside
 * it: the thread ends where it was before that switch.
 */
static int nslib_unwind(int depth)
{
	struct nslib_thread *t = &nslib_t;

	if (depth <= 0 || depth > t->depth)
		return NSLIB_EORDER;
	return nslib_back_to(t, t->e[depth - 1].start);
}

/*
 * End the innermost entered() block: one call, no state from Python, so a
 * block's exit cannot be split by an interrupt and works whatever object or
 * thread it came from.  NSLIB_EUNWOUND: the thread is back, but a switch_to
 * made inside the block was still open and is now abandoned.
 */
static int nslib_exit_block(void)
{
	struct nslib_thread *t = &nslib_t;
	int i = t->depth - 1, inner, rc;

	while (i >= 0 && t->e[i].block != NSLIB_BLOCK)
		i--;
	if (i < 0)
		return NSLIB_EORDER;
	inner = t->e[t->depth - 1].start != i;
	rc = nslib_back_to(t, i);
	return rc == 0 && inner ? NSLIB_EUNWOUND : rc;
}

/*
 * Undo the latest enter if it succeeded and is still the innermost switch:
 * for an enter whose caller was interrupted (KeyboardInterrupt) as the C
 * call returned, before it could record the switch.  Returns 1 if it undid
 * one, 0 if there was nothing to undo, < 0 if moving back failed.
 */
static int nslib_undo_last(void)
{
	struct nslib_thread *t = &nslib_t;
	int d = t->last;

	t->last = 0;
	if (d <= 0 || d != t->depth || t->e[d - 1].serial != t->last_serial)
		return 0;
	return nslib_back_to(t, t->e[d - 1].start) == 0 ? 1 : -1;
}

/* The serial number the next successful enter on this thread will get. */
static long long nslib_next_serial(void) { return nslib_t.next + 1; }

/* A number that identifies the calling thread's switch stack. */
static long long nslib_thread_token(void) { return (long long)(intptr_t)&nslib_t; }

/*
 * Undo the switch numbered `serial`, made on the thread `token` names: for a
 * revert whose whole call path is C (see switching.py).  1: that switch is
 * already over (reverted, or undone by an enclosing block), nothing done;
 * NSLIB_ETHREAD: another thread's switch; NSLIB_EORDER: a switch made after
 * it is still open.
 */
static int nslib_revert(long long serial, long long token)
{
	struct nslib_thread *t = &nslib_t;
	int i;

	if (token != (long long)(intptr_t)t)
		return NSLIB_ETHREAD;
	for (i = t->depth - 1; i >= 0 && t->e[i].serial != serial; i--)
		;
	if (i < 0 || serial == 0)
		return 1;
	if (i != t->depth - 1)
		return NSLIB_EORDER;
	return nslib_back_to(t, t->e[i].start);
}

/* ---- every kind: entering several namespaces as one switch ---------------- */

static int nslib_kind_index(int nstype)
{
	int k;

	for (k = 0; k < NSLIB_KINDS; k++)
		if (nslib_kind_type[k] == nstype)
			return k;
	return -1;
}

/* The cached home of kind k (> 0); see nslib_home for the rules. */
static int nslib_khome(struct nslib_thread *t, int k, dev_t *dev, ino_t *ino)
{
	struct nslib_khome *h = &t->kh[k];
	struct stat st;
	int fd, had = 0;

	if (h->fd > 0) {
		if (nslib_same(h->fd - 1, h->dev, h->ino))
			goto out;
		h->fd = 0;
		had = 1;
	}
	fd = nslib_open_self(t, k);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return -1;
	}
	if (had && (st.st_dev != h->dev || st.st_ino != h->ino)) {
		close(fd);
		t->poisoned = 1;
		return NSLIB_EHOME;
	}
	pthread_once(&nslib_key_once, nslib_make_key);
	if (nslib_key_err != 0 || pthread_setspecific(nslib_key, t) != 0) {
		close(fd);
		errno = nslib_key_err ? nslib_key_err : ENOMEM;
		return -1;
	}
	h->fd = fd + 1;
	h->dev = st.st_dev;
	h->ino = st.st_ino;
out:
	*dev = h->dev;
	*ino = h->ino;
	return h->fd - 1;
}

static int nslib_open_id(const char *path, int flags, dev_t *dev, ino_t *ino)
{
	struct stat st;
	int fd = open(path, flags | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return -1;
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	return fd;
}

/* Record where the thread is in kind k, as entry e (not yet counted). */
static int nslib_save(struct nslib_thread *t, struct nslib_entry *e, int k)
{
	int fd;

	e->k = k;
	e->own = 0;
	e->root = e->cwd = -1;
	e->home = t->count[k] == 0;
	if (e->home)
		fd = k == 0 ? nslib_home(t) : nslib_khome(t, k, &e->dev, &e->ino);
	else
		fd = nslib_open_self_id(t, k, &e->dev, &e->ino);
	if (fd < 0)
		return fd;
	if (e->home && k == 0) {
		e->dev = t->home_dev;
		e->ino = t->home_ino;
	}
	e->saved = fd;
	if (k == NSLIB_KMNT) {
		e->root = nslib_open_id("/", O_PATH | O_DIRECTORY, &e->root_dev, &e->root_ino);
		if (e->root >= 0)
			e->cwd = nslib_open_id(".", O_PATH | O_DIRECTORY, &e->cwd_dev, &e->cwd_ino);
		if (e->root < 0 || e->cwd < 0) {
			int err = errno;

			if (e->root >= 0)
				close(e->root);
			if (!e->home)
				close(fd);
			e->root = e->cwd = -1;
			errno = err;
			return -1;
		}
	}
	t->count[k]++;
	return 0;
}

/*
 * Enter the namespaces fds[1..n] (of types types[0..n-1]: net, uts, ipc,
 * cgroup, mnt; each at most once) as one switch: every one is entered, or
 * none is and the thread has not moved (or, if moving back the ones
 * already entered failed, it is poisoned: NSLIB_ERESTORE).  With a pidfd
 * (>= 0), one setns(pidfd, types) first tries to join that process's
 * namespaces of those types at once (atomic, Linux 5.8+); the fds are the
 * fallback, joined one by one.  `block` as for nslib_enter.  If
 * `owned`, the switch takes fds[1..n] over (they become -1) and closes
 * them when it ends.  Returns the new depth; on failure the type that
 * could not be joined is nslib_failed_type().
 */
static int nslib_enter_kinds(int *fds, const int *types, int n, int block, int pidfd,
			     int owned)
{
	struct nslib_thread *t = &nslib_t;
	struct nslib_entry *e;
	struct stat st;
	int i, k, rc, err, start = t->depth, mask = 0;

	t->last = 0;
	t->failed_type = 0;
	if (t->poisoned)
		return NSLIB_EPOISONED;
	if (n < 1 || n > NSLIB_KINDS || fds[0] != n) {
		errno = EINVAL;
		return -1;
	}
	if (t->depth + n > NSLIB_MAX_DEPTH) {
		errno = EOVERFLOW;
		return -1;
	}
	for (i = 0; i < n; i++) {
		k = nslib_kind_index(types[i]);
		if (k < 0 || (mask & types[i])) {
			t->failed_type = types[i];
			errno = EINVAL;
			return -1;
		}
		mask |= types[i];
	}
	/* A thread must not share its filesystem attributes to change mount ns. */
	if ((mask & CLONE_NEWNS) && !t->fs_private) {
		if (unshare(CLONE_FS) < 0) {
			t->failed_type = CLONE_NEWNS;
			return -1;
		}
		t->fs_private = 1;
	}
	for (i = 0; i < n; i++) {
		e = &t->e[t->depth];
		rc = nslib_save(t, e, nslib_kind_index(types[i]));
		if (rc < 0)
			goto unpush;
		e->start = start;
		e->block = i == 0 ? block : NSLIB_GROUPED;
		e->serial = t->next + 1;
		t->depth++;
		if (owned && fds[i + 1] >= 0 && fstat(fds[i + 1], &st) == 0) {
			e->own = fds[i + 1] + 1;
			e->own_dev = st.st_dev;
			e->own_ino = st.st_ino;
		}
	}
	if (pidfd < 0 || setns(pidfd, mask) < 0) {
		for (i = 0; i < n; i++) {
			if (setns(fds[i + 1], types[i]) == 0)
				continue;
			err = errno;
			t->failed_type = types[i];
			/* Entries not joined yet: nothing to undo, only forget them. */
			while (t->depth > start + i) {
				t->e[t->depth - 1].own = 0;
				nslib_drop(t, --t->depth);
			}
			if (i > 0 && nslib_back_to(t, start) < 0)
				return NSLIB_ERESTORE;
			errno = err;
			return -1;
		}
	}
	if (owned)
		for (i = 0; i < n; i++)
			fds[i + 1] = -1;	/* the entries own them now */
	t->next++;
	t->last_serial = t->next;
	t->last = t->depth;
	return t->depth;
unpush:
	err = errno;
	while (t->depth > start) {
		t->e[t->depth - 1].own = 0;	/* not taken over: the caller keeps them */
		nslib_drop(t, --t->depth);
	}
	errno = err;
	return rc;
}

/*
 * One namespace of any switchable kind: nslib_enter for uts, ipc, cgroup
 * and mnt handles (net handles take nslib_enter).  *own as there.
 */
static int nslib_enter_kind(int target, int nstype, int block, int *own)
{
	struct nslib_entry *e;
	struct stat st;
	int fds[2] = { 1, target };
	int rc;

	if (own && *own >= 0 && fstat(*own, &st) < 0)
		return -1;
	rc = nslib_enter_kinds(fds, &nstype, 1, block, -1, 0);
	if (rc > 0 && own && *own >= 0) {
		e = &nslib_t.e[rc - 1];
		e->own = *own + 1;
		e->own_dev = st.st_dev;
		e->own_ino = st.st_ino;
		*own = -1;
	}
	return rc;
}

/* The CLONE_NEW* type the latest failed nslib_enter_kinds() could not join. */
static int nslib_failed_type(void) { return nslib_t.failed_type; }

/* Close every fd left in a box made for nslib_enter_kinds (a[0] is n). */
static void nslib_fdarray_close(int *a)
{
	int i;

	for (i = 1; i <= a[0] && i <= NSLIB_KINDS; i++) {
		if (a[i] >= 0)
			close(a[i]);
		a[i] = -1;
	}
}

/* The calling thread's namespace of type nstype, into *out (any mount ns). */
static int nslib_open_current_kind(int nstype, int *out)
{
	int k = nslib_kind_index(nstype), fd;

	if (k < 0) {	/* not switchable: still readable through the same directory */
		const char *name;
		int dir = nslib_nsdir(&nslib_t);

		switch (nstype) {
		case CLONE_NEWUSER: name = "user"; break;
		case CLONE_NEWPID: name = "pid"; break;
		case CLONE_NEWTIME: name = "time"; break;
		default:
			errno = EINVAL;
			return -1;
		}
		if (dir < 0)
			return -1;
		fd = openat(dir, name, O_RDONLY | O_CLOEXEC);
	} else {
		fd = nslib_open_self(&nslib_t, k);
	}
	if (fd >= 0)
		*out = fd;
	return fd;
}

/* Whether the calling thread has its own filesystem attributes (for tests). */
static int nslib_fs_private(void) { return nslib_t.fs_private; }

/* The serial number of the switch at `depth`, or 0 if there is none. */
static long long nslib_serial(int depth)
{
	struct nslib_thread *t = &nslib_t;

	if (depth <= 0 || depth > t->depth)
		return 0;
	return t->e[depth - 1].serial;
}

static int nslib_depth(void) { return nslib_t.depth; }
static int nslib_poisoned(void) { return nslib_t.poisoned; }

/* The cached home fd of the calling thread, -1 if none (for tests). */
static int nslib_home_fd(void) { return nslib_t.home - 1; }

/* Join for good (a pinned worker): no save, but honour the poison flag. */
static int nslib_join(int target)
{
	if (nslib_t.poisoned)
		return NSLIB_EPOISONED;
	if (setns(target, CLONE_NEWNET) < 0)
		return -1;
	nslib_moved();
	return 0;
}

/*
 * socket(2) inside `target`: join, create, restore.  No Python runs in
 * between, so no other code can observe the foreign namespace.  The socket
 * goes into *out (see nslib_fdbox_close).
 */
static int nslib_socket_in(int target, int family, int type, int proto, int *out)
{
	struct nslib_thread *t = &nslib_t;
	int sock, err;
	int rc = nslib_enter_(t, target, NSLIB_SWITCH, NULL);

	if (rc < 0)
		return rc;
	t->last = 0;	/* nothing for nslib_undo_last(): this call restores */
	sock = socket(family, type | SOCK_CLOEXEC, proto);
	err = errno;
	if (nslib_back_to(t, rc - 1) < 0) {
		err = errno;
		if (sock >= 0)
			close(sock);
		errno = err;
		return NSLIB_ERESTORE;	/* not a socket() error: say so */
	}
	if (sock >= 0)
		*out = sock;
	errno = err;
	return sock;
}

/*
 * Creating a namespace needs unshare(), which moves the caller for good.  Do
 * it on a throwaway pthread instead, so no thread the caller owns ever
 * changes namespace and there is nothing to restore.
 */
struct nslib_newns {
	int fd;				/* out: an fd of the new namespace */
	int err;
};

static void *nslib_newns_thread(void *arg)
{
	struct nslib_newns *job = arg;

	job->fd = -1;
	job->err = 0;
	if (unshare(CLONE_NEWNET) < 0)
		goto fail;
	job->fd = open(NSLIB_SELF, O_RDONLY | O_CLOEXEC);
	if (job->fd < 0)
		goto fail;
	return NULL;
fail:
	job->err = errno;
	return NULL;
}

static int nslib_run_newns(struct nslib_newns *job)
{
	pthread_attr_t attr;
	pthread_t tid;
	int rc;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	rc = pthread_create(&tid, &attr, nslib_newns_thread, job);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		errno = rc;
		return -1;
	}
	pthread_join(tid, NULL);
	if (job->err) {
		errno = job->err;
		return -1;
	}
	return 0;
}

/* A new, anonymous network namespace; its fd (into *out) keeps it alive. */
static int nslib_new_netns(int *out)
{
	struct nslib_newns job = { .fd = -1 };

	if (nslib_run_newns(&job) < 0)
		return -1;
	*out = job.fd;
	return job.fd;
}

/*
 * How the mount at `path` propagates, in O(1) whatever the size of the mount
 * table: statx(2) gives the mount's unique id, statmount(2) (Linux 6.8+) its
 * peer group and its parent's.  Returns 1 if `path` is the root of a mount,
 * 0 if it merely lies inside one (the peers then describe that mount), -1
 * with errno (ENOSYS on kernels without statmount).  A peer group of 0 means
 * "not shared".  The structs are the kernel's ABI, spelled out here because
 * older userspace headers lack them.
 */
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x00004000U
#endif
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif
/* 457 on the unified syscall table; alpha and mips number it otherwise. */
#if defined(SYS_statmount)
#define NSLIB_NR_STATMOUNT SYS_statmount
#elif defined(__alpha__) || defined(__mips__)
#define NSLIB_NR_STATMOUNT -1	/* unknown here: ENOSYS, callers fall back */
#else
#define NSLIB_NR_STATMOUNT 457
#endif
#define NSLIB_STATMOUNT_MNT_BASIC 0x00000002U

struct nslib_mnt_id_req {
	__u32 size;
	__u32 spare;
	__u64 mnt_id;
	__u64 param;
};

struct nslib_statmount {
	__u32 size;
	__u32 spare1;
	__u64 mask;
	__u32 sb_dev_major;
	__u32 sb_dev_minor;
	__u64 sb_magic;
	__u32 sb_flags;
	__u32 fs_type;
	__u64 mnt_id;
	__u64 mnt_parent_id;
	__u32 mnt_id_old;
	__u32 mnt_parent_id_old;
	__u64 mnt_attr;
	__u64 mnt_propagation;
	__u64 mnt_peer_group;
	__u64 mnt_master;
	__u64 propagate_from;
	__u32 mnt_root;
	__u32 mnt_point;
	__u64 spare2[50];
};

static int nslib_statmount_basic(__u64 id, struct nslib_statmount *sm)
{
	struct nslib_mnt_id_req req = {
		.size = sizeof(req), .mnt_id = id, .param = NSLIB_STATMOUNT_MNT_BASIC,
	};

	memset(sm, 0, sizeof(*sm));
	if (NSLIB_NR_STATMOUNT < 0) {
		errno = ENOSYS;
		return -1;
	}
	if (syscall(NSLIB_NR_STATMOUNT, &req, sm, sizeof(*sm), 0) < 0)
		return -1;
	if (!(sm->mask & NSLIB_STATMOUNT_MNT_BASIC)) {
		errno = ENOSYS;
		return -1;
	}
	return 0;
}

static int nslib_mount_peers(const char *path, unsigned long long *peer,
			     unsigned long long *parent_peer)
{
	struct nslib_statmount sm, parent;
	struct statx stx;

	*peer = 0;
	*parent_peer = 0;
	if (statx(AT_FDCWD, path, 0, STATX_MNT_ID_UNIQUE, &stx) < 0)
		return -1;
	if (!(stx.stx_mask & STATX_MNT_ID_UNIQUE) ||
	    !(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) {
		errno = ENOSYS;
		return -1;
	}
	if (nslib_statmount_basic(stx.stx_mnt_id, &sm) < 0)
		return -1;
	if (sm.mnt_propagation & MS_SHARED)
		*peer = sm.mnt_peer_group;
	/* A parent outside our view (another mount namespace) counts as unshared. */
	if (sm.mnt_parent_id != sm.mnt_id &&
	    nslib_statmount_basic(sm.mnt_parent_id, &parent) == 0 &&
	    (parent.mnt_propagation & MS_SHARED))
		*parent_peer = parent.mnt_peer_group;
	return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
}

/*
 * `ip netns exec` on the calling thread, which must be a dedicated one:
 * join the namespace, take a private mount namespace and remount /sys so it
 * shows the namespace's devices.  As in iproute2, a /sys that cannot be
 * unmounted is tolerated and a read-only one stays read-only.
 */
static int nslib_prepare_exec(int netfd)
{
	unsigned long flags = 0;
	struct statvfs st;

	if (nslib_t.poisoned)
		return NSLIB_EPOISONED;
	if (setns(netfd, CLONE_NEWNET) < 0)
		return -1;
	nslib_moved();
	if (unshare(CLONE_NEWNS) < 0)
		return -1;
	if (mount("", "/", "none", MS_SLAVE | MS_REC, NULL) < 0)
		return -1;
	if (umount2("/sys", MNT_DETACH) < 0) {
		if (statvfs("/sys", &st) == 0 && (st.f_flag & ST_RDONLY))
			flags = MS_RDONLY;
	}
	if (mount("sysfs", "/sys", "sysfs", flags, NULL) < 0)
		return -1;
	return 0;
}

/*
 * statx(2) for what a name is: its identity and the mount it is on.  One
 * call instead of a stat plus a read of /proc/thread-self/fdinfo.
 * out = {stx_mask, st_dev (makedev), st_ino, mount id (0 if not given)}.
 */
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif
#define NSLIB_STATX_MNT_ID STATX_MNT_ID
#define NSLIB_STATX_MNT_ID_UNIQUE STATX_MNT_ID_UNIQUE /* Linux 6.8: never reused */

static int nslib_statx_ids(int dirfd, const char *path, int flags, unsigned int mask,
			   uint64_t out[4])
{
	struct statx stx;

	if (statx(dirfd, path, flags, STATX_INO | mask, &stx) < 0)
		return -1;
	out[0] = stx.stx_mask;
	out[1] = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	out[2] = stx.stx_ino;
	out[3] = stx.stx_mask & (STATX_MNT_ID | NSLIB_STATX_MNT_ID_UNIQUE) ? stx.stx_mnt_id : 0;
	return 0;
}

/*
 * listmount(2), Linux 6.8: the ids of the mounts under mount `mnt_id`
 * (unique ids), after `last`.  -1 with ENOSYS on older kernels.
 */
#if defined(SYS_listmount)
#define NSLIB_NR_LISTMOUNT SYS_listmount
#elif defined(__alpha__) || defined(__mips__)
#define NSLIB_NR_LISTMOUNT -1	/* unknown here: ENOSYS, callers fall back */
#else
#define NSLIB_NR_LISTMOUNT 458
#endif

static long nslib_listmount(uint64_t mnt_id, uint64_t last, uint64_t *ids, size_t n)
{
	struct nslib_mnt_id_req req = { .size = sizeof(req), .mnt_id = mnt_id, .param = last };

	if (NSLIB_NR_LISTMOUNT < 0) {
		errno = ENOSYS;
		return -1;
	}
	return syscall(NSLIB_NR_LISTMOUNT, &req, ids, n, 0);
}
