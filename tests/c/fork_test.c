/* fork() at any moment from any thread: 8 threads acquire, update and release locks (and
 * update one handle the main thread holds) while the main thread forks 200 times. Each child
 * calls every function on the inherited handles (which must give LOCK_EFORKED, or
 * LOCK_ENOTHELD for a worker's handle released just before the fork) and on a lock of its
 * own, then _exits with a bit set per failed expectation. The parent kills a child that has
 * not exited 5 s after its fork and counts it as hung; at the end its own lock must still be
 * held (lock_update OK) and released OK.
 *
 *   fork_test PREFIX     PREFIX: a target prefix such as "sem:ft-123", "zk:ft-123",
 *                        "consul:ft-123"; locks are PREFIX-<suffix>.
 * Prints "forks N, children ok N, failed N, hung N, worker errors N" and exits 0 only when
 * every child passed and no worker saw an unexpected error. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lockfn.h"

#define WORKERS 8
#define FORKS 200
#define OUTSTANDING 8
#define CHILD_LIMIT_NS (5LL * 1000000000LL)

static const char *prefix;
static lock_handle *main_handle;
static uint64_t main_token;
static _Atomic(lock_handle *) current[WORKERS];
static atomic_int stop;
static atomic_int worker_errors;
static atomic_long worker_ops;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* pmxcfs fixes the lifetime (120 s): no ttl there; 10 s elsewhere (short sessions). */
static unsigned ttl_for(const char *p) { return strncmp(p, "pmxcfs:", 7) == 0 ? 0 : 10; }

static void worker_error(const char *what, int rc) {
  atomic_fetch_add(&worker_errors, 1);
  fprintf(stderr, "worker: %s: %s (%s)\n", what, lock_strerror(rc), lock_last_error());
}

static void *worker(void *arg) {
  int id = (int)(long)arg;
  char target[256];
  lock_options o;
  lock_options_init(&o);
  o.timeout = 10;
  o.ttl = ttl_for(prefix);
  unsigned i = 0;
  while (!atomic_load(&stop)) {
    /* Two workers per name: contention as well as uncontended cycles. */
    snprintf(target, sizeof target, "%s-w%d", prefix, id / 2);
    lock_handle *h = NULL;
    int rc = lock_acquire(target, &o, &h);
    if (rc == LOCK_BUSY) continue;
    if (rc != LOCK_OK) {
      worker_error("lock_acquire", rc);
      continue;
    }
    atomic_store(&current[id], h);
    if ((rc = lock_update(h)) != LOCK_OK) worker_error("lock_update", rc);
    if (lock_token(h) == 0) worker_error("lock_token", LOCK_EINTERNAL);
    /* The main thread's handle, used by every worker at once. */
    if ((rc = lock_update(main_handle)) != LOCK_OK) worker_error("lock_update(main)", rc);
    if (i++ % 16 == 0) {
      char *json = NULL;
      if ((rc = lock_status(target, &json)) != LOCK_OK) worker_error("lock_status", rc);
      lock_string_free(json);
    }
    atomic_store(&current[id], NULL);
    if ((rc = lock_release(h)) != LOCK_OK) worker_error("lock_release", rc);
    atomic_fetch_add(&worker_ops, 1);
  }
  return NULL;
}

/* The child: every function, on inherited handles and on a new lock. Returns a bit mask of
 * failed expectations (0: all as expected). */
static int child(int n) {
  int bad = 0, rc;
  /* Inherited: the main thread's handle (workers were updating it at fork time). */
  if (lock_update(main_handle) != LOCK_EFORKED) bad |= 1;
  if (lock_token(main_handle) != main_token) bad |= 2;
  /* Inherited: whatever the workers held at fork time. */
  for (int w = 0; w < WORKERS; w++) {
    lock_handle *h = atomic_load(&current[w]);
    if (!h) continue;
    rc = lock_update(h);
    if (rc != LOCK_EFORKED && rc != LOCK_ENOTHELD) bad |= 4;
    (void)lock_token(h);
    rc = lock_release(h);
    if (rc != LOCK_EFORKED && rc != LOCK_ENOTHELD) bad |= 4;
  }
  /* A lock of the child's own. */
  char target[256];
  snprintf(target, sizeof target, "%s-child%d", prefix, n);
  lock_options o;
  lock_options_init(&o);
  o.timeout = 4;
  o.ttl = ttl_for(prefix);
  lock_handle *h = NULL;
  if (lock_acquire(target, &o, &h) != LOCK_OK) {
    fprintf(stderr, "child %d: lock_acquire: %s\n", n, lock_last_error());
    bad |= 8;
  } else {
    if (lock_update(h) != LOCK_OK) bad |= 16;
    if (lock_token(h) == 0) bad |= 16;
    char *json = NULL;
    if (lock_status(target, &json) != LOCK_OK || !json || !strstr(json, "\"held\":true"))
      bad |= 32;
    lock_string_free(json);
    if (lock_release(h) != LOCK_OK) bad |= 64;
  }
  /* lock_gc on the host-local service (sem): a zk: or consul: gc scans the service's whole
   * tree of locks, seconds on a server that earlier runs filled, which is no fork matter. */
  unsigned removed = 0;
  char scope[300];
  const char *colon = strchr(prefix, ':');
  snprintf(scope, sizeof scope, "sem:%s-child%d", colon ? colon + 1 : prefix, n);
  rc = lock_gc(scope, &removed);
  if (rc != LOCK_OK && rc != LOCK_EUNAVAILABLE) bad |= 128;
  /* The inherited handle, released in the child: EFORKED, then no longer live. */
  if (lock_release(main_handle) != LOCK_EFORKED) bad |= 256;
  if (lock_release(main_handle) != LOCK_ENOTHELD) bad |= 256;
  if (!lock_strerror(LOCK_EFORKED) || !lock_last_error() || !lock_version()) bad |= 512;
  return bad;
}

struct kid {
  pid_t pid;
  long long forked;
};

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fork_test PREFIX\n");
    return 2;
  }
  prefix = argv[1];
  char target[256];
  snprintf(target, sizeof target, "%s-main", prefix);
  lock_options o;
  lock_options_init(&o);
  o.timeout = 10;
  o.ttl = ttl_for(prefix);
  int rc = lock_acquire(target, &o, &main_handle);
  if (rc != LOCK_OK) {
    fprintf(stderr, "main lock_acquire: %s (%s)\n", lock_strerror(rc), lock_last_error());
    return 1;
  }
  main_token = lock_token(main_handle);
  pthread_t t[WORKERS];
  for (long i = 0; i < WORKERS; i++) pthread_create(&t[i], NULL, worker, (void *)i);

  struct kid kids[OUTSTANDING];
  memset(kids, 0, sizeof kids);
  int forks = 0, ok = 0, failed = 0, hung = 0, running = 0;
  while (forks < FORKS || running > 0) {
    /* Reap, and kill whatever is past its 5 s. */
    for (int k = 0; k < OUTSTANDING; k++) {
      if (!kids[k].pid) continue;
      int st;
      pid_t r = waitpid(kids[k].pid, &st, WNOHANG);
      if (r == kids[k].pid) {
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
          ok++;
        } else {
          failed++;
          fprintf(stderr, "child %d: status 0x%x\n", (int)kids[k].pid, st);
        }
        kids[k].pid = 0;
        running--;
      } else if (now_ns() - kids[k].forked > CHILD_LIMIT_NS) {
        fprintf(stderr, "child %d hung (no exit within 5 s): killed\n", (int)kids[k].pid);
        kill(kids[k].pid, SIGKILL);
        waitpid(kids[k].pid, &st, 0);
        hung++;
        kids[k].pid = 0;
        running--;
      }
    }
    if (forks < FORKS && running < OUTSTANDING) {
      int k = 0;
      while (kids[k].pid) k++;
      int n = forks++;
      pid_t p = fork();
      if (p == 0) _exit(child(n));
      if (p < 0) {
        perror("fork");
        failed++;
        continue;
      }
      kids[k].pid = p;
      kids[k].forked = now_ns();
      running++;
    } else {
      struct timespec ms = {0, 1000000};
      nanosleep(&ms, NULL);
    }
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < WORKERS; i++) pthread_join(t[i], NULL);
  /* The parent is untouched: its lock is still held and released normally. */
  int parent_ok = lock_update(main_handle) == LOCK_OK && lock_token(main_handle) == main_token;
  if (!parent_ok) fprintf(stderr, "parent: lock_update after forks: %s\n", lock_last_error());
  if (lock_release(main_handle) != LOCK_OK) {
    fprintf(stderr, "parent: lock_release: %s\n", lock_last_error());
    parent_ok = 0;
  }
  printf("forks %d, children ok %d, failed %d, hung %d, worker errors %d, worker cycles %ld\n",
         forks, ok, failed, hung, atomic_load(&worker_errors), atomic_load(&worker_ops));
  return (ok == FORKS && failed == 0 && hung == 0 && atomic_load(&worker_errors) == 0 &&
          atomic_load(&worker_ops) > 0 && parent_ok)
             ? 0
             : 1;
}
