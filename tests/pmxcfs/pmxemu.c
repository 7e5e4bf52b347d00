/*
 * pmxemu.so: an LD_PRELOAD shim that makes a plain directory answer lock requests the way
 * pmxcfs's priv/lock does (measured semantics, issue 3), and counts the calls that would be
 * cluster-wide messages on a real pmxcfs.
 *
 *   PMXEMU_DIR=/abs/path/priv/lock   the emulated lock directory (direct children are locks)
 *   PMXEMU_TTL=120                   seconds after creation / last refresh a lock expires
 *   PMXEMU_LOG=/abs/file             append "OP PID RESULT ERRNO MONO_NS NAME" per mkdir, rmdir,
 *                                    utime (OP: mkdir rmdir unlock refresh expire)
 *
 * Emulated for a lock path:
 *   utime(0, 0)     the unlock request: ENOENT if missing; if older than TTL (by ctime):
 *                   rmdir it and fail with ENOENT; else fail with EACCES. Never sets times.
 *   utime(0, T)     the refresh: EACCES if T is older than the current mtime; else sets it.
 * Not emulated: node identity (a refresh from "another node"), FUSE stat caching.
 *
 * Build: cc -shared -fPIC -O2 -o pmxemu.so pmxemu.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

static const char *lock_name(int dirfd, const char *path) {
    const char *dir = getenv("PMXEMU_DIR");
    size_t n;
    if (!dir || !*dir || !path || (dirfd != AT_FDCWD && path[0] != '/'))
        return NULL;
    n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    if (strncmp(path, dir, n) != 0 || path[n] != '/' || path[n + 1] == '\0')
        return NULL;
    if (strchr(path + n + 1, '/'))
        return NULL; /* nested: not a lock */
    return path + n + 1;
}

static void logop(const char *op, const char *name, int ret, int err) {
    const char *f = getenv("PMXEMU_LOG");
    char line[512];
    int fd, len;
    struct timespec m;
    if (!f || !*f)
        return;
    clock_gettime(CLOCK_MONOTONIC, &m);
    len = snprintf(line, sizeof line, "%s %d %d %d %lld %s\n", op, (int)getpid(), ret,
                   ret ? err : 0, (long long)m.tv_sec * 1000000000LL + m.tv_nsec, name);
    if (len <= 0 || len >= (int)sizeof line)
        return;
    fd = open(f, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)len) < 0) { /* best effort */
    }
    close(fd);
}

static double ttl(void) {
    const char *t = getenv("PMXEMU_TTL");
    double v = t ? atof(t) : 0;
    return v > 0 ? v : 120.0;
}

static int (*real_rmdir_fn)(const char *);
static int real_rmdir(const char *p) {
    if (!real_rmdir_fn)
        real_rmdir_fn = (int (*)(const char *))dlsym(RTLD_NEXT, "rmdir");
    return real_rmdir_fn(p);
}

static int (*real_utimensat_fn)(int, const char *, const struct timespec *, int);
static int real_utimensat(int fd, const char *p, const struct timespec t[2], int fl) {
    if (!real_utimensat_fn)
        real_utimensat_fn = (int (*)(int, const char *, const struct timespec *, int))dlsym(
            RTLD_NEXT, "utimensat");
    return real_utimensat_fn(fd, p, t, fl);
}

/* The emulated utime on a lock path; times NULL = "now". */
static int emu_utime(const char *path, const char *name, const struct timespec *t, int fl) {
    struct stat st;
    struct timespec now;
    int ret, err = 0;
    if (t && t[0].tv_sec == 0 && t[0].tv_nsec == 0 && t[1].tv_sec == 0 && t[1].tv_nsec == 0) {
        /* unlock request */
        if (lstat(path, &st) != 0) {
            ret = -1;
            err = errno;
        } else {
            double age;
            clock_gettime(CLOCK_REALTIME, &now);
            /* Age from the last change pmxcfs saw (creation or refresh): the ctime, which the
             * kernel sets to "now" on mkdir and on every utime that goes through; the mtime a
             * refresh passes is the caller's (whole seconds) and can lie in the past. */
            age = (double)(now.tv_sec - st.st_ctim.tv_sec) +
                  (double)(now.tv_nsec - st.st_ctim.tv_nsec) / 1e9;
            if (age >= ttl()) {
                if (real_rmdir(path) == 0) {
                    logop("expire", name, 0, 0);
                    ret = -1;
                    err = ENOENT;
                } else {
                    ret = -1;
                    err = errno == ENOENT ? ENOENT : EACCES;
                }
            } else {
                ret = -1;
                err = EACCES;
            }
        }
        logop("unlock", name, ret, err);
    } else {
        if (t && t[1].tv_nsec != UTIME_NOW && t[1].tv_nsec != UTIME_OMIT &&
            lstat(path, &st) == 0 && t[1].tv_sec < st.st_mtim.tv_sec) {
            ret = -1;
            err = EACCES;
        } else {
            ret = real_utimensat(AT_FDCWD, path, t, fl);
            err = ret ? errno : 0;
        }
        logop("refresh", name, ret, err);
    }
    errno = err;
    return ret;
}

int utimensat(int dirfd, const char *path, const struct timespec times[2], int flags) {
    const char *name = lock_name(dirfd, path);
    if (!name)
        return real_utimensat(dirfd, path, times, flags);
    return emu_utime(path, name, times, flags);
}

int utimes(const char *path, const struct timeval tv[2]) {
    struct timespec ts[2];
    const char *name = lock_name(AT_FDCWD, path);
    if (tv) {
        ts[0].tv_sec = tv[0].tv_sec;
        ts[0].tv_nsec = tv[0].tv_usec * 1000;
        ts[1].tv_sec = tv[1].tv_sec;
        ts[1].tv_nsec = tv[1].tv_usec * 1000;
    }
    if (!name)
        return real_utimensat(AT_FDCWD, path, tv ? ts : NULL, 0);
    return emu_utime(path, name, tv ? ts : NULL, 0);
}

int utime(const char *path, const struct utimbuf *b) {
    struct timespec ts[2];
    const char *name = lock_name(AT_FDCWD, path);
    if (b) {
        ts[0].tv_sec = b->actime;
        ts[0].tv_nsec = 0;
        ts[1].tv_sec = b->modtime;
        ts[1].tv_nsec = 0;
    }
    if (!name)
        return real_utimensat(AT_FDCWD, path, b ? ts : NULL, 0);
    return emu_utime(path, name, b ? ts : NULL, 0);
}

int mkdir(const char *path, mode_t mode) {
    static int (*real)(const char *, mode_t);
    const char *name = lock_name(AT_FDCWD, path);
    int ret, err;
    if (!real)
        real = (int (*)(const char *, mode_t))dlsym(RTLD_NEXT, "mkdir");
    ret = real(path, mode);
    err = errno;
    if (name)
        logop("mkdir", name, ret, err);
    errno = err;
    return ret;
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    static int (*real)(int, const char *, mode_t);
    const char *name = lock_name(dirfd, path);
    int ret, err;
    if (!real)
        real = (int (*)(int, const char *, mode_t))dlsym(RTLD_NEXT, "mkdirat");
    ret = real(dirfd, path, mode);
    err = errno;
    if (name)
        logop("mkdir", name, ret, err);
    errno = err;
    return ret;
}

int rmdir(const char *path) {
    const char *name = lock_name(AT_FDCWD, path);
    int ret = real_rmdir(path), err = errno;
    if (name)
        logop("rmdir", name, ret, err);
    errno = err;
    return ret;
}
