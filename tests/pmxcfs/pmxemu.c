/*
 * pmxemu: a FUSE file system that behaves like pmxcfs (Proxmox's cluster file system) in local
 * mode (`pmxcfs -l`, one writer) wherever lockfn depends on it. Written from the measured facts
 * in PMXCFS.md and from reading pve-cluster's src/pmxcfs (memdb.c, cfs-plug-memdb.c, pmxcfs.c);
 * see tests/pmxcfs/README.md for each behaviour and its source. No pmxcfs code is used.
 *
 *   pmxemu [--ttl SECONDS] [--state FILE] [--log FILE] [--watch-pid PID] MOUNTPOINT
 *
 * It runs in the foreground, libfuse 2's high-level API, multi-threaded, mounted with pmxcfs's
 * options (-odefault_permissions -oallow_other -obig_writes) and without use_ino, so st_ino is
 * libfuse's node number exactly as on pmxcfs. The tree starts as /priv/lock (or what --state
 * holds); --state FILE is rewritten after every change and read at start (a restart keeps the
 * tree, resets every lock time to now, and libfuse numbers its nodes afresh). --log FILE gets
 * one line per operation on a lock directory (a direct child of /priv/lock) that reaches the
 * file system: "OP PID RESULT ERRNO MONO_NS NAME", OP one of mkdir rmdir unlock refresh expire,
 * RESULT 0 or -1 and ERRNO what the caller sees, PID the caller's process (thread group).
 * --watch-pid PID: exit (and unmount) once PID is gone, so a killed test leaves no mount.
 * SIGTERM/SIGINT/SIGHUP: unmount and exit. SIGSTOP freezes it as it freezes pmxcfs.
 *
 * Build: cc -O2 -Wall -o pmxemu pmxemu.c $(pkg-config --cflags --libs fuse)   (libfuse-dev)
 */
#define FUSE_USE_VERSION 26
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILE_SIZE (1024 * 1024) /* memdb.h MEMDB_MAX_FILE_SIZE */
#define BLOCKSIZE 4096              /* memdb.h MEMDB_BLOCKSIZE */
#define WWW_DATA_GID 33             /* pmxcfs: cfs.gid = getgrnam("www-data") */

typedef struct entry {
    char *name;
    int dir;
    uint64_t inode, version, parent; /* memdb's inode and version numbers, not st_ino */
    uint32_t writer, mtime;          /* whole seconds */
    size_t size;
    char *data;
    struct entry *up, *kids, *next;
} entry;

/* The in-memory lock table (memdb->locks): path -> lock time and the entry's "checksum". */
typedef struct lockinfo {
    char *path;
    uint32_t ltime;
    uint64_t inode, version, parent;
    uint32_t writer, mtime;
    size_t size;
    struct lockinfo *next;
} lockinfo;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry *root;
static uint64_t root_version; /* memdb->root->version: every change bumps it */
static lockinfo *locks;
static long ttl = 120; /* memdb.c CFS_LOCK_TIMEOUT */
static const char *state_file, *log_file;
static struct fuse *the_fuse;

/* ------------------------------------------------------------------------------------------ */
/* tree */

static entry *entry_new(const char *name, int dir) {
    entry *e = calloc(1, sizeof *e);
    e->name = strdup(name);
    e->dir = dir;
    return e;
}

static entry *child(entry *d, const char *name) {
    for (entry *e = d ? d->kids : NULL; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void attach(entry *d, entry *e) {
    e->up = d;
    e->parent = d->inode;
    e->next = d->kids;
    d->kids = e;
}

static void detach(entry *e) {
    entry **p = &e->up->kids;
    while (*p != e)
        p = &(*p)->next;
    *p = e->next;
    e->up = NULL;
    e->next = NULL;
}

static void entry_free(entry *e) {
    free(e->name);
    free(e->data);
    free(e);
}

/* The entry at a FUSE path ("/", "/priv/lock/x"); NULL if missing. */
static entry *lookup(const char *path) {
    char buf[PATH_MAX];
    entry *e = root;
    if (strlen(path) >= sizeof buf)
        return NULL;
    strcpy(buf, path);
    for (char *save, *c = strtok_r(buf, "/", &save); c && e; c = strtok_r(NULL, "/", &save))
        e = e->dir ? child(e, c) : NULL;
    return e;
}

/* Split "/a/b/c" into the parent entry and the base name "c" (points into path). */
static entry *lookup_parent(const char *path, const char **base) {
    char buf[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t n;
    if (!slash)
        return NULL;
    *base = slash + 1;
    n = (size_t)(slash - path);
    if (n >= sizeof buf)
        return NULL;
    memcpy(buf, path, n);
    buf[n] = 0;
    return lookup(n ? buf : "/");
}

static int bad_base(const char *b) {
    return b[0] == 0 || strcmp(b, ".") == 0 || strcmp(b, "..") == 0;
}

/* cfs-utils.c path_is_private / path_is_lockdir, on FUSE paths. */
static int path_is_private(const char *p) {
    while (*p == '/')
        p++;
    return strncmp(p, "priv", 4) == 0 && (p[4] == 0 || p[4] == '/');
}
static int path_is_lockdir(const char *p) {
    while (*p == '/')
        p++;
    return strncmp(p, "priv/lock/", 10) == 0 && p[10];
}
/* A lock directory proper (memdb.c: dirname == "priv/lock"): the name, else NULL. */
static const char *lock_name(const char *p) {
    while (*p == '/')
        p++;
    if (strncmp(p, "priv/lock/", 10) != 0 || !p[10] || strchr(p + 10, '/'))
        return NULL;
    return p + 10;
}

static void bump(entry *e, uint32_t mtime) {
    root_version++;
    root->version = root_version;
    root->mtime = mtime;
    e->version = root_version;
    e->writer = 0;
    e->mtime = mtime;
}

/* ------------------------------------------------------------------------------------------ */
/* lock table (memdb.c memdb_lock_expired, memdb_update_locks) */

static lockinfo *lock_find(const char *path, lockinfo ***at) {
    lockinfo **p = &locks;
    for (; *p; p = &(*p)->next)
        if (strcmp((*p)->path, path) == 0)
            break;
    if (at)
        *at = p;
    return *p;
}

static void lock_remove(const char *path) {
    lockinfo **p, *li = lock_find(path, &p);
    if (li) {
        *p = li->next;
        free(li->path);
        free(li);
    }
}

static int csum_equal(const lockinfo *li, const entry *e) {
    return li->inode == e->inode && li->version == e->version && li->parent == e->parent &&
           li->writer == e->writer && li->mtime == e->mtime && li->size == e->size;
}
static void csum_set(lockinfo *li, const entry *e) {
    li->inode = e->inode;
    li->version = e->version;
    li->parent = e->parent;
    li->writer = e->writer;
    li->mtime = e->mtime;
    li->size = e->size;
}

/* memdb_lock_expired: unknown -> remember with lock time now; changed entry -> reset the lock
 * time; else expired iff now - ltime > TTL (whole seconds). */
static int lock_expired(const char *path, const entry *e) {
    uint32_t now = (uint32_t)time(NULL);
    lockinfo *li = lock_find(path, NULL);
    if (li) {
        if (!csum_equal(li, e)) {
            li->ltime = now;
            csum_set(li, e);
            return 0;
        }
        return now > li->ltime && (long)(now - li->ltime) > ttl;
    }
    li = calloc(1, sizeof *li);
    li->path = strdup(path);
    li->ltime = now;
    csum_set(li, e);
    li->next = locks;
    locks = li;
    return 0;
}

/* At start: every lock directory's lock time is now (memdb_update_locks). */
static void update_locks(void) {
    entry *l = lookup("/priv/lock");
    char path[PATH_MAX];
    if (!l || !l->dir)
        return;
    for (entry *e = l->kids; e; e = e->next) {
        if (!e->dir)
            continue;
        snprintf(path, sizeof path, "/priv/lock/%s", e->name);
        lock_remove(path);
        lock_expired(path, e);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* state file: "pmxemu 1 ROOT_VERSION" then one line per entry, parents first:
 * "D|F INODE VERSION MTIME PATH_HEX DATA_HEX" (PATH_HEX of the path below the root). */

static void hex(FILE *f, const char *s, size_t n) {
    if (!n)
        fputc('-', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", (unsigned char)s[i]);
}

static void save_tree(FILE *f, entry *d, const char *prefix) {
    char path[PATH_MAX];
    for (entry *e = d->kids; e; e = e->next) {
        snprintf(path, sizeof path, "%s/%s", prefix, e->name);
        fprintf(f, "%c %llu %llu %u ", e->dir ? 'D' : 'F', (unsigned long long)e->inode,
                (unsigned long long)e->version, e->mtime);
        hex(f, path, strlen(path));
        fputc(' ', f);
        hex(f, e->data, e->data ? e->size : 0);
        fputc('\n', f);
        if (e->dir)
            save_tree(f, e, path);
    }
}

static void save(void) {
    char tmp[PATH_MAX];
    FILE *f;
    if (!state_file)
        return;
    snprintf(tmp, sizeof tmp, "%s.tmp", state_file);
    if (!(f = fopen(tmp, "w")))
        return;
    fprintf(f, "pmxemu 1 %llu %llu %u\n", (unsigned long long)root_version,
            (unsigned long long)root->inode, root->mtime);
    save_tree(f, root, "");
    if (fclose(f) == 0)
        rename(tmp, state_file);
}

static size_t unhex(const char *h, char *out, size_t cap) {
    size_t n = 0;
    if (strcmp(h, "-") == 0)
        return 0;
    for (; h[0] && h[1] && n < cap; h += 2) {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1)
            break;
        out[n++] = (char)v;
    }
    return n;
}

static int load(void) {
    FILE *f;
    char *line = NULL, kind, *ph, *dh;
    size_t cap = 0;
    unsigned long long rv, ri, ino, ver;
    unsigned mt, rm;
    static char path[PATH_MAX], data[MAX_FILE_SIZE];
    if (!state_file || !(f = fopen(state_file, "r")))
        return 0;
    if (getline(&line, &cap, f) < 0 || sscanf(line, "pmxemu 1 %llu %llu %u", &rv, &ri, &rm) != 3) {
        fprintf(stderr, "pmxemu: %s: not a state file\n", state_file);
        exit(1);
    }
    root_version = rv;
    root->inode = ri;
    root->mtime = rm;
    ph = malloc(2 * PATH_MAX + 2);
    dh = malloc(2 * MAX_FILE_SIZE + 2);
    while (getline(&line, &cap, f) > 0) {
        const char *base;
        entry *d, *e;
        size_t pn, dn;
        if (sscanf(line, "%c %llu %llu %u %8193s %2097153s", &kind, &ino, &ver, &mt, ph, dh) != 6)
            continue;
        pn = unhex(ph, path, sizeof path - 1);
        path[pn] = 0;
        dn = unhex(dh, data, sizeof data);
        if (!(d = lookup_parent(path, &base)) || !d->dir || child(d, base))
            continue;
        e = entry_new(base, kind == 'D');
        e->inode = ino;
        e->version = ver;
        e->mtime = mt;
        if (!e->dir && dn) {
            e->data = malloc(dn);
            memcpy(e->data, data, dn);
            e->size = dn;
        }
        attach(d, e);
    }
    free(ph);
    free(dh);
    free(line);
    fclose(f);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* log */

static pid_t caller_tgid(void) {
    pid_t tid = fuse_get_context()->pid;
    char p[64], *line = NULL;
    size_t cap = 0;
    pid_t tgid = tid;
    FILE *f;
    snprintf(p, sizeof p, "/proc/%d/status", (int)tid);
    if ((f = fopen(p, "r"))) {
        while (getline(&line, &cap, f) > 0)
            if (sscanf(line, "Tgid: %d", &tgid) == 1)
                break;
        free(line);
        fclose(f);
    }
    return tgid;
}

static void logop(const char *op, const char *path, int res) {
    const char *name = lock_name(path);
    struct timespec m;
    char line[2048];
    int fd, len;
    if (!log_file || !name)
        return;
    clock_gettime(CLOCK_MONOTONIC, &m);
    len = snprintf(line, sizeof line, "%s %d %d %d %lld %s\n", op, (int)caller_tgid(),
                   res ? -1 : 0, res ? -res : 0, (long long)m.tv_sec * 1000000000LL + m.tv_nsec,
                   name);
    if (len <= 0 || len >= (int)sizeof line)
        return;
    fd = open(log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)len) < 0) { /* best effort */
    }
    close(fd);
}

/* ------------------------------------------------------------------------------------------ */
/* FUSE operations (pmxcfs.c cfs_fuse_*, cfs-plug-memdb.c, memdb.c) */

static void fill_stat(const char *path, const entry *e, struct stat *st) {
    memset(st, 0, sizeof *st);
    /* tree_entry_stat with quorum (local mode is quorate), then cfs_fuse_getattr's masks */
    if (e->dir) {
        st->st_mode = S_IFDIR | 0777;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0666;
        st->st_nlink = 1;
    }
    st->st_size = (off_t)e->size;
    st->st_blocks = (st->st_size + BLOCKSIZE - 1) / BLOCKSIZE;
    st->st_atime = st->st_mtime = st->st_ctime = e->mtime;
    st->st_uid = 0;
    st->st_gid = WWW_DATA_GID;
    if (path_is_private(path))
        st->st_mode &= 0777700;
    else if (S_ISDIR(st->st_mode))
        st->st_mode &= 0777755;
    else
        st->st_mode &= 0777750;
}

static int op_getattr(const char *path, struct stat *st) {
    entry *e;
    int ret = -ENOENT;
    pthread_mutex_lock(&mu);
    if ((e = lookup(path))) {
        fill_stat(path, e, st);
        ret = 0;
    }
    pthread_mutex_unlock(&mu);
    return ret;
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
                      struct fuse_file_info *fi) {
    entry *d;
    struct stat st;
    (void)off;
    (void)fi;
    pthread_mutex_lock(&mu);
    if ((d = lookup(path)) && d->dir && d->kids) {
        filler(buf, ".", NULL, 0);
        filler(buf, "..", NULL, 0);
        for (entry *e = d->kids; e; e = e->next) {
            memset(&st, 0, sizeof st);
            st.st_mode = e->dir ? S_IFDIR | 0555 : S_IFREG | 0444;
            filler(buf, e->name, &st, 0);
        }
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

static int do_mkdir(const char *path) {
    const char *base;
    entry *d, *e;
    uint32_t now = (uint32_t)time(NULL);
    if (!(d = lookup_parent(path, &base)))
        return -ENOENT;
    if (!d->dir)
        return -ENOTDIR;
    if (bad_base(base))
        return -EACCES;
    if (child(d, base))
        return -EEXIST;
    e = entry_new(base, 1);
    bump(e, now);
    e->inode = e->version;
    attach(d, e);
    if (lock_name(path)) {
        lock_remove(path);
        lock_expired(path, e); /* a new entry: lock time now */
    }
    return 0;
}

static int op_mkdir(const char *path, mode_t mode) {
    int ret;
    (void)mode;
    pthread_mutex_lock(&mu);
    ret = do_mkdir(path);
    if (ret == 0)
        save();
    logop("mkdir", path, ret);
    pthread_mutex_unlock(&mu);
    return ret;
}

/* memdb_delete */
static int do_delete(const char *path) {
    entry *e = lookup(path);
    if (!e)
        return -ENOENT;
    if (e == root)
        return -EACCES;
    if (e->dir) {
        if (e->kids)
            return -ENOTEMPTY;
        lock_remove(path);
    }
    detach(e);
    entry_free(e);
    root_version++;
    root->version = root_version;
    root->mtime = (uint32_t)time(NULL);
    return 0;
}

static int op_rmdir(const char *path) {
    int ret;
    pthread_mutex_lock(&mu);
    ret = do_delete(path);
    if (ret == 0)
        save();
    logop("rmdir", path, ret);
    pthread_mutex_unlock(&mu);
    return ret;
}

static int op_unlink(const char *path) {
    int ret;
    pthread_mutex_lock(&mu);
    ret = do_delete(path);
    if (ret == 0)
        save();
    pthread_mutex_unlock(&mu);
    return ret;
}

/* memdb_rename */
static int op_rename(const char *from, const char *to) {
    entry *e, *t, *d;
    const char *base;
    int ret = 0;
    pthread_mutex_lock(&mu);
    if (!(e = lookup(from))) {
        ret = -ENOENT;
        goto out;
    }
    if (e == root) {
        ret = -EACCES;
        goto out;
    }
    if (e->dir && path_is_lockdir(from)) { /* "we do not allow rename for locks" */
        ret = -EACCES;
        goto out;
    }
    if ((t = lookup(to))) {
        if (t->dir && t->kids) {
            ret = -ENOTEMPTY;
            goto out;
        }
        if (t == e)
            goto out;
        d = t->up;
        base = t->name; /* still valid: copied below before freeing */
        if (e->dir && e->kids) {
            ret = -ENOTEMPTY;
            goto out;
        }
        detach(t);
        detach(e);
        free(e->name);
        e->name = strdup(base);
        entry_free(t);
    } else {
        if (!(d = lookup_parent(to, &base))) {
            ret = -ENOENT;
            goto out;
        }
        if (!d->dir) {
            ret = -ENOTDIR;
            goto out;
        }
        if (e->dir && e->kids) { /* memdb can only move empty directories */
            ret = -ENOTEMPTY;
            goto out;
        }
        detach(e);
        free(e->name);
        e->name = strdup(base);
    }
    bump(e, (uint32_t)time(NULL));
    attach(d, e);
    save();
out:
    pthread_mutex_unlock(&mu);
    return ret;
}

/* memdb_pwrite */
static int do_pwrite(const char *path, const char *buf, size_t count, off_t off, int trunc,
                     int create) {
    const char *base;
    entry *d, *e;
    size_t newsize;
    char *nd;
    if (off < 0 || (size_t)off + count > MAX_FILE_SIZE)
        return -EFBIG;
    if (!(d = lookup_parent(path, &base)))
        return -ENOENT;
    if (!d->dir)
        return -ENOTDIR;
    if (bad_base(base))
        return -EACCES;
    if ((e = child(d, base))) {
        if (e->dir)
            return -ENOTDIR;
        if (create)
            return -EEXIST;
    } else {
        if (!create)
            return -ENOENT;
        e = entry_new(base, 0);
        bump(e, (uint32_t)time(NULL));
        e->inode = e->version;
        attach(d, e);
        save();
        return 0;
    }
    bump(e, (uint32_t)time(NULL));
    newsize = (size_t)off + count;
    if (newsize < e->size && !trunc)
        newsize = e->size;
    nd = calloc(1, newsize ? newsize : 1);
    if (e->data)
        memcpy(nd, e->data, e->size < newsize ? e->size : newsize);
    if (count)
        memcpy(nd + off, buf, count);
    free(e->data);
    e->data = nd;
    e->size = newsize;
    save();
    return (int)count;
}

static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int ret;
    (void)mode;
    (void)fi;
    pthread_mutex_lock(&mu);
    ret = do_pwrite(path, NULL, 0, 0, 0, 1);
    pthread_mutex_unlock(&mu);
    return ret;
}

static int op_open(const char *path, struct fuse_file_info *fi) {
    int ret;
    fi->direct_io = 1; /* as cfs_fuse_open */
    fi->keep_cache = 0;
    pthread_mutex_lock(&mu);
    ret = lookup(path) ? 0 : -ENOENT;
    pthread_mutex_unlock(&mu);
    return ret;
}

static int op_read(const char *path, char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi) {
    entry *e;
    int ret;
    (void)fi;
    pthread_mutex_lock(&mu);
    if (!(e = lookup(path)) || e->dir) {
        ret = -ENOENT;
    } else if ((size_t)off < e->size) {
        if ((size_t)off + size > e->size)
            size = e->size - (size_t)off;
        memcpy(buf, e->data + off, size);
        ret = (int)size;
    } else {
        ret = 0;
    }
    pthread_mutex_unlock(&mu);
    return ret;
}

static int op_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    int ret;
    (void)fi;
    pthread_mutex_lock(&mu);
    ret = do_pwrite(path, buf, size, off, 0, 0);
    pthread_mutex_unlock(&mu);
    return ret;
}

static int op_truncate(const char *path, off_t size) {
    int ret;
    pthread_mutex_lock(&mu);
    ret = do_pwrite(path, NULL, 0, size, 1, 0);
    pthread_mutex_unlock(&mu);
    return ret < 0 ? ret : 0;
}

/* memdb_mtime */
static int do_mtime(const char *path, uint32_t mtime) {
    const char *base;
    entry *d, *e;
    int is_lock;
    if (!(d = lookup_parent(path, &base)))
        return -ENOENT;
    if (!d->dir)
        return -ENOTDIR;
    if (bad_base(base))
        return -EACCES;
    if (!(e = child(d, base)))
        return -ENOENT;
    is_lock = lock_name(path) && e->dir;
    if (is_lock && mtime < e->mtime) /* "dir is locked"; same writer always in local mode */
        return -EACCES;
    bump(e, mtime);
    if (is_lock) { /* "update cfs lock": a new entry, lock time now */
        lock_remove(path);
        lock_expired(path, e);
    }
    return 0;
}

/* cfs_plug_memdb_utimens (local mode): utime(dir, *, 0) on a lock path is an unlock request,
 * which deletes an expired lock; anything else sets the mtime (lock dirs: never backwards).
 * After a deletion the call returns 0 here, and libfuse's getattr after setattr makes the
 * caller see ENOENT. */
static int op_utimens(const char *path, const struct timespec tv[2]) {
    entry *e;
    uint32_t mtime = (uint32_t)tv[1].tv_sec;
    int ret, unlock_req, expired = 0;
    pthread_mutex_lock(&mu);
    e = lookup(path);
    unlock_req = e && mtime == 0 && e->dir && path_is_lockdir(path);
    if (unlock_req && lock_expired(path, e)) {
        ret = do_delete(path);
        expired = ret == 0;
    } else {
        ret = do_mtime(path, mtime);
    }
    if (ret == 0)
        save();
    if (expired) {
        logop("expire", path, 0);
        logop("unlock", path, -ENOENT);
    } else {
        logop(mtime == 0 ? "unlock" : "refresh", path, ret);
    }
    pthread_mutex_unlock(&mu);
    return ret;
}

/* cfs_fuse_chmod: only the supported modes (0600 in priv/, 0640 elsewhere) "succeed"; they
 * change nothing. */
static int op_chmod(const char *path, mode_t mode) {
    mode_t allowed = S_IRUSR | S_IWUSR;
    if (!path_is_private(path))
        allowed |= S_IRGRP;
    return (mode & ALLPERMS) == allowed ? 0 : -EPERM;
}

static int op_chown(const char *path, uid_t uid, gid_t gid) {
    (void)path;
    return (uid == 0 || uid == (uid_t)-1) && (gid == WWW_DATA_GID || gid == (gid_t)-1) ? 0
                                                                                       : -EPERM;
}

static void count_tree(const entry *d, size_t *files, size_t *size) {
    *files += 1;
    *size += d->size;
    for (const entry *e = d->kids; e; e = e->next)
        count_tree(e, files, size);
}

/* memdb_statfs */
static int op_statfs(const char *path, struct statvfs *st) {
    size_t files = 0, size = 0;
    (void)path;
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&mu);
    count_tree(root, &files, &size);
    pthread_mutex_unlock(&mu);
    st->f_bsize = BLOCKSIZE;
    st->f_blocks = (128 * 1024 * 1024) / BLOCKSIZE;
    st->f_bfree = st->f_bavail = st->f_blocks - (size + BLOCKSIZE - 1) / BLOCKSIZE;
    st->f_files = 256 * 1024;
    st->f_ffree = st->f_files - files;
    st->f_namemax = 256;
    return 0;
}

static void *op_init(struct fuse_conn_info *conn) {
    (void)conn;
    return NULL;
}

static struct fuse_operations ops = {
    .getattr = op_getattr,
    .readdir = op_readdir,
    .mkdir = op_mkdir,
    .rmdir = op_rmdir,
    .rename = op_rename,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .truncate = op_truncate,
    .create = op_create,
    .unlink = op_unlink,
    .utimens = op_utimens,
    .statfs = op_statfs,
    .init = op_init,
    .chown = op_chown,
    .chmod = op_chmod,
};

/* ------------------------------------------------------------------------------------------ */

static void *watch(void *arg) {
    pid_t pid = (pid_t)(intptr_t)arg;
    sigset_t all;
    int fd;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals go to the main thread (libfuse's loop) */
    fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        while (poll(&p, 1, -1) < 0 && errno == EINTR) {
        }
    } else if (errno == ESRCH) {
        /* already gone */
    } else {
        while (kill(pid, 0) == 0 || errno == EPERM)
            sleep(1); /* no pidfd_open (old kernel): poll */
    }
    kill(getpid(), SIGTERM); /* libfuse's handler ends the loop; main unmounts */
    return NULL;
}

static void usage(void) {
    fprintf(stderr,
            "usage: pmxemu [--ttl SECONDS] [--state FILE] [--log FILE] [--watch-pid PID] MOUNT\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *mnt = NULL;
    pid_t watch_pid = 0;
    char *fa[] = {argv[0], "-odefault_permissions", "-oallow_other", "-obig_writes", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(4, fa);
    struct fuse_chan *ch;
    entry *priv, *lock;
    int ret;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc)
            ttl = atol(argv[++i]);
        else if (strcmp(argv[i], "--state") == 0 && i + 1 < argc)
            state_file = argv[++i];
        else if (strcmp(argv[i], "--log") == 0 && i + 1 < argc)
            log_file = argv[++i];
        else if (strcmp(argv[i], "--watch-pid") == 0 && i + 1 < argc)
            watch_pid = (pid_t)atol(argv[++i]);
        else if (argv[i][0] != '-' && !mnt)
            mnt = argv[i];
        else
            usage();
    }
    if (!mnt || ttl < 0)
        usage();

    root = entry_new("", 1);
    root->inode = 0;
    root->mtime = (uint32_t)time(NULL);
    if (!load()) {
        /* a fresh database with /etc/pve/priv/lock, as on an installed node */
        do_mkdir("/priv");
        do_mkdir("/priv/lock");
        save();
    }
    if (!(priv = lookup("/priv")) || !(lock = lookup("/priv/lock")) || !priv->dir || !lock->dir) {
        fprintf(stderr, "pmxemu: no /priv/lock in %s\n", state_file ? state_file : "(none)");
        return 1;
    }
    update_locks();

    if (!(ch = fuse_mount(mnt, &args))) {
        fprintf(stderr, "pmxemu: fuse_mount %s failed\n", mnt);
        return 1;
    }
    if (!(the_fuse = fuse_new(ch, &args, &ops, sizeof ops, NULL))) {
        fprintf(stderr, "pmxemu: fuse_new failed\n");
        fuse_unmount(mnt, ch);
        return 1;
    }
    fuse_set_signal_handlers(fuse_get_session(the_fuse));
    if (watch_pid > 0) {
        pthread_t t;
        pthread_create(&t, NULL, watch, (void *)(intptr_t)watch_pid);
        pthread_detach(t);
    }
    ret = fuse_loop_mt(the_fuse);
    fuse_remove_signal_handlers(fuse_get_session(the_fuse));
    fuse_unmount(mnt, ch);
    fuse_destroy(the_fuse);
    return ret ? 1 : 0;
}
