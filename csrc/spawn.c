/* SPDX-License-Identifier: Apache-2.0
 *
 * Spawning a program inside several namespaces at once, as `nsenter -a`
 * does, without forking Python and without preexec_fn.
 *
 * One call does everything: the parent (a Python thread, GIL released)
 * blocks every signal and clone()s a child on a stack of its own; the child
 * joins the namespaces, changes root and cwd, sets up its fds and execs.
 * Only async-signal-safe calls run in the child, and nothing in it takes a
 * lock or allocates: a multithreaded parent may hold any lock at the moment
 * of the clone.
 *
 * The child shares the parent's memory (CLONE_VM | CLONE_VFORK, as
 * posix_spawn does), which makes a spawn cost the same whatever the size of
 * the Python process, except when it must join a time namespace: the kernel
 * refuses that to a task sharing its memory with another (EUSERS), so the
 * child is then a plain fork.
 *
 * Join order and user-namespace rules follow util-linux nsenter(1): every
 * kind but USER first, ignoring failures; then what is left, USER first,
 * reporting failures.  So a privileged caller enters a container's user
 * namespace last (dropping privilege), and a caller that needs the user
 * namespace's capabilities enters it first.  With USER and the CREDS flag,
 * the child drops supplementary groups and becomes uid/gid 0 there, as
 * nsenter does.
 *
 * A PID namespace only applies to children, so when one is joined the
 * child clones a grandchild with CLONE_PARENT: the grandchild is the
 * caller's own child (the caller waits for it as for any child), and the
 * intermediate exits at once.  This is nsenter's double fork without a
 * process left in between.
 *
 * Errors travel back over a close-on-exec pipe as (step, kind, errno)
 * records; a successful exec closes it.  The parent reaps whatever failed,
 * so nothing is left behind.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/magic.h>
#include <linux/nsfs.h>

#include "spawn.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436	/* the same on every architecture */
#endif
/* 32-bit ids where the plain calls are the 16-bit ones. */
#ifdef SYS_setgroups32
#define NSLIB_SYS_SETGROUPS SYS_setgroups32
#define NSLIB_SYS_SETGID SYS_setgid32
#define NSLIB_SYS_SETUID SYS_setuid32
#else
#define NSLIB_SYS_SETGROUPS SYS_setgroups
#define NSLIB_SYS_SETGID SYS_setgid
#define NSLIB_SYS_SETUID SYS_setuid
#endif

extern char **environ;

/* nsenter's order: user, cgroup, ipc, uts, net, pid, mnt, time. */
static const int nslib_join_order[] = {
	CLONE_NEWUSER, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWUTS,
	CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWNS, CLONE_NEWTIME,
};

#define NSLIB_STACK (128 * 1024)

struct nslib_child {
	const struct nslib_spawn_req *req;
	int errfd;
	int setgroups_failed;
	sigset_t oldmask;
	char *stack2;		/* the grandchild's stack top, for a PID namespace */
};

int nslib_check_kind(int fd, int want, int *nstype)
{
	struct statfs sfs;
	int type;

	*nstype = 0;
	if (fstatfs(fd, &sfs) < 0)
		return -1;
	if (sfs.f_type != NSFS_MAGIC)
		return NSLIB_KIND_ENOTNS;
	type = ioctl(fd, NS_GET_NSTYPE);
	if (type < 0)
		return errno == EBADF ? -1 : NSLIB_KIND_ENOTNS;
	*nstype = type;
	return (want == 0 || type == want) ? 0 : NSLIB_KIND_EWRONGTYPE;
}

/*
 * open + check in one call, so a rejected file never leaks its fd.  The fd
 * also goes into *out, a box that owns it until Python takes it (see
 * nslib_fdbox_close in nslib.c).
 */
int nslib_open_kind(int dirfd, const char *path, int want, int *nstype, int *out)
{
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	int rc, err;

	*nstype = 0;
	if (fd < 0)
		return -1;
	rc = nslib_check_kind(fd, want, nstype);
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
 * The namespace of type `nstype` of the process a pidfd refers to, straight
 * from the pidfd (PIDFD_GET_*_NAMESPACE, Linux 6.11+): no /proc path, so no
 * PID that could be reused.  -1 with ENOTTY (or EINVAL) on older kernels.
 */
int nslib_pidfd_ns(int pidfd, int nstype, int *out)
{
	unsigned long req;
	int fd;

	switch (nstype) {
	case CLONE_NEWCGROUP: req = _IO(0xFF, 1); break;
	case CLONE_NEWIPC: req = _IO(0xFF, 2); break;
	case CLONE_NEWNS: req = _IO(0xFF, 3); break;
	case CLONE_NEWNET: req = _IO(0xFF, 4); break;
	case CLONE_NEWPID: req = _IO(0xFF, 5); break;
	case CLONE_NEWTIME: req = _IO(0xFF, 7); break;
	case CLONE_NEWUSER: req = _IO(0xFF, 9); break;
	case CLONE_NEWUTS: req = _IO(0xFF, 10); break;
	default:
		errno = EINVAL;
		return -1;
	}
	fd = ioctl(pidfd, req, 0);
	if (fd < 0)
		return -1;
	if (fd < 3 || !(fcntl(fd, F_GETFD) & FD_CLOEXEC)) {
		/* Never a standard stream, always close-on-exec. */
		int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3), err = errno;

		close(fd);
		errno = err;
		if (moved < 0)
			return -1;
		fd = moved;
	}
	*out = fd;
	return fd;
}

/* ---- the child: async-signal-safe from here to the exec ---------------- */

static void __attribute__((noreturn))
nslib_report(struct nslib_child *c, int step, int kind, int err)
{
	struct nslib_spawn_err rec = { .step = step, .kind = kind, .err = err };
	ssize_t n;

	do
		n = write(c->errfd, &rec, sizeof(rec));
	while (n < 0 && errno == EINTR);
	_exit(127);
}

static void nslib_default_signals(int restore)
{
	struct sigaction sa;
	int sig;

	/* Handlers are the parent's code, and may touch its memory: none may run. */
	for (sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		if (sigaction(sig, NULL, &sa) < 0)
			continue;	/* libc's own signals */
		if (sa.sa_handler == SIG_DFL)
			continue;
		if (sa.sa_handler == SIG_IGN && !(restore && (sig == SIGPIPE || sig == SIGXFSZ)))
			continue;	/* an ignored signal stays ignored across exec */
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = SIG_DFL;
		sigaction(sig, &sa, NULL);
	}
}

static int nslib_ns_fd(const struct nslib_spawn_req *req, int type)
{
	int i;

	for (i = 0; i < req->n_ns; i++)
		if (req->ns_types[i] == type)
			return req->ns_fds[i];
	return -1;
}

static void nslib_join_all(struct nslib_child *c)
{
	const struct nslib_spawn_req *req = c->req;
	int pending = 0, want, i, t, fd;

	for (i = 0; i < req->n_ns; i++)
		pending |= req->ns_types[i];

	/* Pass 1: everything but the user namespace, failures ignored. */
	if (req->pidfd >= 0) {
		want = pending & req->pidfd_types & ~CLONE_NEWUSER;
		if (want && setns(req->pidfd, want) == 0)
			pending &= ~want;
	}
	for (i = 0; i < 8; i++) {
		t = nslib_join_order[i];
		if (t == CLONE_NEWUSER || !(pending & t))
			continue;
		fd = nslib_ns_fd(req, t);
		if (fd >= 0 && setns(fd, t) == 0)
			pending &= ~t;
	}
	/* Pass 2: what is left, the user namespace first; failures count. */
	if (req->pidfd >= 0) {
		want = pending & req->pidfd_types;
		if (want && setns(req->pidfd, want) == 0)
			pending &= ~want;
	}
	for (i = 0; i < 8; i++) {
		t = nslib_join_order[i];
		if (!(pending & t))
			continue;
		fd = nslib_ns_fd(req, t);
		if (fd < 0 || setns(fd, t) < 0)
			nslib_report(c, NSLIB_STEP_SETNS, t, fd < 0 ? EBADF : errno);
		pending &= ~t;
	}
}

static void nslib_root_cwd(struct nslib_child *c)
{
	const struct nslib_spawn_req *req = c->req;
	int keep = -1;

	if (req->root_fd >= 0) {
		/* As nsenter: without a new cwd, stay where the joins left us. */
		if (req->cwd_fd < 0 && req->cwd_path == NULL) {
			keep = open(".", O_RDONLY | O_CLOEXEC | O_DIRECTORY);
			if (keep < 0)
				nslib_report(c, NSLIB_STEP_CWD, 0, errno);
		}
		if (fchdir(req->root_fd) < 0 || chroot(".") < 0 || chdir("/") < 0)
			nslib_report(c, NSLIB_STEP_ROOT, 0, errno);
		if (keep >= 0) {
			if (fchdir(keep) < 0)
				nslib_report(c, NSLIB_STEP_CWD, 0, errno);
			close(keep);
		}
	}
	if (req->cwd_fd >= 0 && fchdir(req->cwd_fd) < 0)
		nslib_report(c, NSLIB_STEP_CWD, 0, errno);
	if (req->cwd_path != NULL && chdir(req->cwd_path) < 0)
		nslib_report(c, NSLIB_STEP_CWD, 0, errno);
}

static int nslib_inherit(int fd)
{
	int flags = fcntl(fd, F_GETFD);

	if (flags < 0)
		return -1;
	if (flags & FD_CLOEXEC)
		return fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
	return 0;
}

static int nslib_cloexec_range(unsigned int lo, unsigned int hi)
{
	struct rlimit rl;
	unsigned int fd;
	int flags;

	if (lo > hi)
		return 0;
	if (syscall(SYS_close_range, lo, hi, CLOSE_RANGE_CLOEXEC) == 0)
		return 0;
	/* Before Linux 5.11: one fcntl per possible fd. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur <= hi)
		hi = rl.rlim_cur ? (unsigned int)rl.rlim_cur - 1 : 0;
	for (fd = lo; fd <= hi && fd < 1048576; fd++) {
		flags = fcntl(fd, F_GETFD);
		if (flags >= 0 && !(flags & FD_CLOEXEC))
			fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
	}
	return 0;
}

/* stdio and inherited fds, as subprocess sets them up. */
static void nslib_fds(struct nslib_child *c)
{
	const struct nslib_spawn_req *req = c->req;
	int in = req->stdin_fd, out = req->stdout_fd, err = req->stderr_fd;
	unsigned int lo = 3;
	int i;

	/* Move fds that the dup2() below would overwrite out of the way. */
	if (out == 0 && (out = fcntl(out, F_DUPFD_CLOEXEC, 3)) < 0)
		nslib_report(c, NSLIB_STEP_FDS, 0, errno);
	if ((err == 0 || err == 1) && (err = fcntl(err, F_DUPFD_CLOEXEC, 3)) < 0)
		nslib_report(c, NSLIB_STEP_FDS, 0, errno);
	if (in >= 0 && (in == 0 ? nslib_inherit(0) : dup2(in, 0)) < 0)
		nslib_report(c, NSLIB_STEP_FDS, 0, errno);
	if (out >= 0 && (out == 1 ? nslib_inherit(1) : dup2(out, 1)) < 0)
		nslib_report(c, NSLIB_STEP_FDS, 1, errno);
	if (err >= 0 && (err == 2 ? nslib_inherit(2) : dup2(err, 2)) < 0)
		nslib_report(c, NSLIB_STEP_FDS, 2, errno);
	for (i = 0; i < req->n_keep; i++) {
		int fd = req->keep_fds[i];

		if (nslib_inherit(fd) < 0)
			nslib_report(c, NSLIB_STEP_FDS, fd, errno);
		if (req->flags & NSLIB_SPAWN_CLOSE_FDS) {
			if (fd >= 3 && (unsigned int)fd >= lo)
				nslib_cloexec_range(lo, fd - 1);
			if (fd >= 3)
				lo = fd + 1;
		}
	}
	if (req->flags & NSLIB_SPAWN_CLOSE_FDS)
		nslib_cloexec_range(lo, ~0U);
}

static void __attribute__((noreturn)) nslib_exec(struct nslib_child *c)
{
	const struct nslib_spawn_req *req = c->req;
	char *const *envp = req->envp ? req->envp : environ;
	char *const *p;
	int saved = 0;

	nslib_fds(c);
	if ((req->flags & NSLIB_SPAWN_SETSID) && setsid() < 0)
		nslib_report(c, NSLIB_STEP_SESSION, 0, errno);
	if (req->pgid >= 0 && setpgid(0, req->pgid) < 0)
		nslib_report(c, NSLIB_STEP_SESSION, 1, errno);
	if (req->umask >= 0)
		umask(req->umask);
	/*
	 * Raw syscalls: libc's wrappers broadcast id changes to every thread
	 * they know of, and in a child sharing the parent's memory those are
	 * the parent's threads.
	 */
	if (req->flags & NSLIB_SPAWN_CREDS) {
		if (syscall(NSLIB_SYS_SETGROUPS, 0, NULL) < 0 && c->setgroups_failed)
			nslib_report(c, NSLIB_STEP_SETGROUPS, 0, errno);
		if (syscall(NSLIB_SYS_SETGID, 0) < 0)
			nslib_report(c, NSLIB_STEP_SETGID, 0, errno);
		if (syscall(NSLIB_SYS_SETUID, 0) < 0)
			nslib_report(c, NSLIB_STEP_SETUID, 0, errno);
	}
	sigprocmask(SIG_SETMASK, &c->oldmask, NULL);
	/* As subprocess: report the first error that is not "no such file". */
	for (p = req->exec_paths; *p; p++) {
		execve(*p, req->argv, envp);
		if (errno != ENOENT && errno != ENOTDIR && saved == 0)
			saved = errno;
	}
	nslib_report(c, NSLIB_STEP_EXEC, 0, saved ? saved : errno);
}

static int nslib_grandchild(void *arg)
{
	nslib_exec(arg);
}

static int nslib_child(void *arg)
{
	struct nslib_child *c = arg;
	struct nslib_spawn_err rec = { 0 };
	pid_t pid;
	ssize_t n;

	nslib_default_signals(c->req->flags & NSLIB_SPAWN_RESTORE_SIGNALS);
	if (c->req->flags & NSLIB_SPAWN_CREDS)
		c->setgroups_failed = syscall(NSLIB_SYS_SETGROUPS, 0, NULL) < 0;
	nslib_join_all(c);
	nslib_root_cwd(c);
	if (c->stack2 == NULL)
		nslib_exec(c);
	/*
	 * The PID namespace applies to our children: make one that is the
	 * caller's child (CLONE_PARENT), report its pid and go away.
	 */
	pid = clone(nslib_grandchild, c->stack2,
		    CLONE_VM | CLONE_VFORK | CLONE_PARENT | SIGCHLD, c);
	if (pid < 0)
		nslib_report(c, NSLIB_STEP_FORK, 0, errno);
	rec.err = pid;		/* step 0: "this is the pid" */
	do
		n = write(c->errfd, &rec, sizeof(rec));
	while (n < 0 && errno == EINTR);
	_exit(0);
}

/* ---- the parent ------------------------------------------------------------ */

static void nslib_reap(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR)
		;
}

int nslib_spawn(const struct nslib_spawn_req *req, struct nslib_spawn_err *out)
{
	struct nslib_child c = { .req = req };
	struct nslib_spawn_err rec;
	sigset_t all;
	char *stack;
	pid_t pid, final = -1;
	int fds[2], flags, i, types = 0, got = 0, err;
	ssize_t n;

	memset(out, 0, sizeof(*out));
	if (req->n_ns < 0 || req->n_ns > NSLIB_SPAWN_MAX_NS || req->argv == NULL ||
	    req->argv[0] == NULL || req->exec_paths == NULL) {
		out->step = NSLIB_STEP_PIPE;
		out->err = errno = EINVAL;
		return -1;
	}
	for (i = 0; i < req->n_ns; i++)
		types |= req->ns_types[i];
	if (pipe2(fds, O_CLOEXEC) < 0)
		goto fail_early;
	/* The child's stdio dup2()s must never hit the error pipe. */
	if (fds[1] < 3) {
		int moved = fcntl(fds[1], F_DUPFD_CLOEXEC, 3);

		err = errno;
		close(fds[1]);
		fds[1] = moved;
		if (moved < 0) {
			close(fds[0]);
			errno = err;
			goto fail_early;
		}
	}
	stack = mmap(NULL, 2 * NSLIB_STACK, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED) {
		err = errno;
		close(fds[0]);
		close(fds[1]);
		errno = err;
		goto fail_early;
	}
	c.errfd = fds[1];
	c.stack2 = (types & CLONE_NEWPID) ? stack + 2 * NSLIB_STACK : NULL;
	flags = CLONE_VFORK | SIGCHLD;
	if (!(types & CLONE_NEWTIME))
		flags |= CLONE_VM;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &c.oldmask);
	pid = clone(nslib_child, stack + NSLIB_STACK, flags, &c);
	err = errno;
	pthread_sigmask(SIG_SETMASK, &c.oldmask, NULL);
	close(fds[1]);
	/* CLONE_VFORK: the child has exec'd or exited, its stack is free. */
	munmap(stack, 2 * NSLIB_STACK);
	if (pid < 0) {
		close(fds[0]);
		out->step = NSLIB_STEP_CLONE;
		out->err = errno = err;
		return -1;
	}
	final = c.stack2 ? -1 : pid;
	for (;;) {
		n = read(fds[0], &rec, sizeof(rec));
		if (n < 0 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof(rec))
			break;
		if (rec.step == 0)
			final = rec.err;
		else if (!got) {
			*out = rec;
			got = 1;
		}
	}
	close(fds[0]);
	if (c.stack2)
		nslib_reap(pid);	/* the intermediate */
	if (got) {
		if (final > 0)
			nslib_reap(final);
		errno = out->err;
		return -1;
	}
	if (final <= 0) {	/* the intermediate died without a word */
		out->step = NSLIB_STEP_FORK;
		out->err = errno = ECHILD;
		return -1;
	}
	return final;

fail_early:
	out->step = NSLIB_STEP_PIPE;
	out->err = errno;
	return -1;
}
