/* SPDX-License-Identifier: Apache-2.0
 *
 * Spawning a program inside several namespaces at once (csrc/spawn.c).
 * Included by the cffi preamble; the cdef block at the end of nslib.h
 * declares the same things for Python.
 */
#ifndef NSLIB_SPAWN_H
#define NSLIB_SPAWN_H

/* What the child was doing when it failed (nslib_spawn_err.step). */
#define NSLIB_STEP_SETNS 1	/* .kind is the CLONE_NEW* flag */
#define NSLIB_STEP_SETGROUPS 2
#define NSLIB_STEP_SETGID 3
#define NSLIB_STEP_SETUID 4
#define NSLIB_STEP_ROOT 5
#define NSLIB_STEP_CWD 6
#define NSLIB_STEP_FORK 7	/* the second fork, for a PID namespace */
#define NSLIB_STEP_FDS 8
#define NSLIB_STEP_SESSION 9
#define NSLIB_STEP_EXEC 10
#define NSLIB_STEP_CLONE 11	/* the first clone, in the parent */
#define NSLIB_STEP_PIPE 12	/* the parent's own setup */

/* nslib_spawn_req.flags */
#define NSLIB_SPAWN_CLOSE_FDS 1		/* close every fd >= 3 not in keep_fds */
#define NSLIB_SPAWN_RESTORE_SIGNALS 2	/* SIGPIPE, SIGXFSZ back to default */
#define NSLIB_SPAWN_SETSID 4
#define NSLIB_SPAWN_CREDS 8	/* setgroups({}), setgid(0), setuid(0): nsenter's user-ns rule */

/* open_kind() codes beyond -1 (errno); the same values as nslib.c's. */
#define NSLIB_KIND_ENOTNS -2
#define NSLIB_KIND_EWRONGTYPE -3

#define NSLIB_SPAWN_MAX_NS 8

struct nslib_spawn_req {
	char *const *argv;		/* NULL-terminated */
	char *const *envp;		/* NULL-terminated, or NULL: this process's environ */
	char *const *exec_paths;	/* candidates tried in order, NULL-terminated */
	int ns_fds[NSLIB_SPAWN_MAX_NS];
	int ns_types[NSLIB_SPAWN_MAX_NS];
	int n_ns;
	int pidfd;			/* -1, or a pidfd for one setns() of pidfd_types */
	int pidfd_types;
	int root_fd;			/* -1, or a directory to chroot into */
	int cwd_fd;			/* -1, or a directory to fchdir into */
	const char *cwd_path;		/* NULL, or a path to chdir to (after root) */
	int stdin_fd, stdout_fd, stderr_fd;	/* -1: inherit */
	const int *keep_fds;		/* sorted, kept open across exec */
	int n_keep;
	int flags;
	int pgid;			/* -1: leave; >= 0: setpgid(0, pgid) */
	int umask;			/* -1: leave */
};

struct nslib_spawn_err {
	int step;
	int kind;
	int err;
};

int nslib_spawn(const struct nslib_spawn_req *req, struct nslib_spawn_err *out);
int nslib_open_kind(int dirfd, const char *path, int want, int *nstype, int *out);
int nslib_pidfd_ns(int pidfd, int nstype, int *out);
int nslib_check_kind(int fd, int want, int *nstype);

#endif
