/* Exercises every function of include/lockfn.h and every error path on the sem backend.
 * Built by tests/c_abi.rs with gcc -Wall -Wextra -Werror and run (also under valgrind).
 * Usage: abi_test NAME   (NAME: a unique lock name for this run) */
#define _GNU_SOURCE
#include "lockfn.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        checks++;                                                         \
        if (!(cond)) {                                                    \
            failures++;                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fprintf(stderr, " (last error: %s)\n", lock_last_error());    \
        }                                                                 \
    } while (0)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char target[256], other[256];

static void test_static_strings(void) {
    CHECK(lock_version() != NULL && strlen(lock_version()) > 0, "version");
    for (int c = LOCK_OK; c <= LOCK_EINTERNAL; c++)
        CHECK(lock_strerror(c) != NULL && strlen(lock_strerror(c)) > 0, "strerror(%d)", c);
    CHECK(strstr(lock_strerror(12345), "unknown") != NULL, "unknown code text");
    CHECK(lock_last_error() != NULL, "last_error never NULL");
}

static void test_null_and_invalid(void) {
    lock_handle *h = (lock_handle *)0x1;
    lock_options_init(NULL); /* ignored */
    CHECK(lock_acquire(NULL, NULL, &h) == LOCK_EINVAL, "NULL target");
    CHECK(h == NULL, "out reset to NULL on failure");
    CHECK(strstr(lock_last_error(), "NULL") != NULL, "message names NULL: %s", lock_last_error());
    CHECK(lock_acquire(target, NULL, NULL) == LOCK_EINVAL, "NULL out");

    char long_name[320] = "sem:";
    memset(long_name + 4, 'a', 300);
    long_name[304] = 0;
    const char *bad[] = {"sem:../x", "", "sem:", "sem:a\x01z", "sem:a/b", "nosuch:x", long_name};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        h = (lock_handle *)0x1;
        CHECK(lock_acquire(bad[i], NULL, &h) == LOCK_EINVAL, "invalid target #%zu", i);
        CHECK(h == NULL, "out NULL for invalid target #%zu", i);
        CHECK(strlen(lock_last_error()) > 0, "a message for invalid target #%zu", i);
    }

    lock_options o;
    lock_options_init(&o);
    o.size = 0;
    CHECK(lock_acquire(target, &o, &h) == LOCK_EINVAL, "size 0");
    lock_options_init(&o);
    o.limit = 0;
    CHECK(lock_acquire(target, &o, &h) == LOCK_EINVAL, "limit 0");
    lock_options_init(&o);
    o.limit = 2;
    o.flags = LOCK_FLAG_SHARED;
    CHECK(lock_acquire(target, &o, &h) == LOCK_EINVAL, "limit with shared");
    lock_options_init(&o);
    o.flags = 0x1000;
    CHECK(lock_acquire(target, &o, &h) == LOCK_EINVAL, "unknown flag");

    CHECK(lock_update(NULL) == LOCK_EINVAL, "update NULL");
    CHECK(lock_release(NULL) == LOCK_OK, "release NULL is a no-op");
    CHECK(lock_token(NULL) == 0, "token NULL");
    CHECK(lock_update((lock_handle *)0x12345) == LOCK_ENOTHELD, "update of a made-up handle");
    CHECK(lock_release((lock_handle *)0x12345) == LOCK_ENOTHELD, "release of a made-up handle");
    char *json = (char *)0x1;
    CHECK(lock_status(NULL, &json) == LOCK_EINVAL && json == NULL, "status NULL target");
    CHECK(lock_status(target, NULL) == LOCK_EINVAL, "status NULL out");
    CHECK(lock_status("sem:../etc", &json) == LOCK_EINVAL, "status invalid target");
    lock_string_free(NULL);
    char stack[8] = "x";
    lock_string_free(stack); /* not ours: ignored */
    CHECK(lock_gc("nosuch", NULL) == LOCK_EINVAL, "gc bad scope");
    unsigned n = 99;
    CHECK(lock_gc("sem:no-such-prefix-xyz", &n) == LOCK_OK && n == 0, "gc empty scope n=%u", n);
}

static void test_acquire_release(void) {
    lock_options o;
    lock_options_init(&o);
    o.holder = "abi test";
    lock_handle *h = NULL, *h2 = NULL;
    CHECK(lock_acquire(target, &o, &h) == LOCK_OK && h != NULL, "acquire");
    uint64_t t1 = lock_token(h);
    CHECK(t1 > 0, "token");
    CHECK(lock_update(h) == LOCK_OK, "update");

    char *json = NULL;
    CHECK(lock_status(target, &json) == LOCK_OK && json, "status");
    if (json) {
        CHECK(strstr(json, "\"held\":true") != NULL, "status held: %s", json);
        CHECK(strstr(json, "abi test") != NULL, "status holder text: %s", json);
        lock_string_free(json);
        lock_string_free(json); /* double free of ours: ignored */
    }

    /* busy: try once and timeout */
    lock_options t;
    lock_options_init(&t);
    t.timeout = 0;
    CHECK(lock_acquire(target, &t, &h2) == LOCK_BUSY && h2 == NULL, "try-once busy");
    t.timeout = 0.3;
    double s = now();
    CHECK(lock_acquire(target, &t, &h2) == LOCK_BUSY, "timeout busy");
    double el = now() - s;
    CHECK(el >= 0.29 && el < 2.0, "timeout waited %.3f s", el);

    /* reentrant */
    t.flags = LOCK_FLAG_REENTRANT;
    CHECK(lock_acquire(target, &t, &h2) == LOCK_OK, "reentrant acquire");
    CHECK(lock_token(h2) == t1, "reentrant shares the token");
    CHECK(lock_release(h2) == LOCK_OK, "reentrant release");
    CHECK(lock_update(h) == LOCK_OK, "still held after inner release");

    /* fork: the child's copy is the parent's; the parent keeps the lock */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int ok = lock_update(h) == LOCK_EFORKED && lock_release(h) == LOCK_EFORKED &&
                 lock_release(h) == LOCK_ENOTHELD;
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw LOCK_EFORKED (status %d)", st);
    CHECK(lock_update(h) == LOCK_OK, "parent still holds after the child");
    t.flags = 0;
    t.timeout = 0;
    CHECK(lock_acquire(target, &t, &h2) == LOCK_BUSY, "and others still can't take it");

    CHECK(lock_release(h) == LOCK_OK, "release");
    CHECK(lock_release(h) == LOCK_ENOTHELD, "double release");
    CHECK(lock_update(h) == LOCK_ENOTHELD, "update after release");
    CHECK(lock_token(h) == 0, "token after release");

    CHECK(lock_acquire(target, &t, &h2) == LOCK_OK, "free again");
    CHECK(lock_token(h2) > t1, "token grew: %llu > %llu", (unsigned long long)lock_token(h2),
          (unsigned long long)t1);
    CHECK(lock_release(h2) == LOCK_OK, "release 2");
}

static void test_cancel(void) {
    lock_handle *h = NULL, *h2 = NULL;
    CHECK(lock_acquire(other, NULL, &h) == LOCK_OK, "acquire other");
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(2);
    }
    lock_options o;
    lock_options_init(&o);
    o.cancel_fd = p[0];
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct timespec d = {0, 200 * 1000 * 1000};
        nanosleep(&d, NULL);
        if (write(p[1], "x", 1) != 1) _exit(1);
        _exit(0);
    }
    double s = now();
    CHECK(lock_acquire(other, &o, &h2) == LOCK_ECANCELED && h2 == NULL, "cancel_fd cancels");
    double el = now() - s;
    CHECK(el >= 0.15 && el < 0.7, "canceled after %.3f s (written at 0.2 s)", el);
    waitpid(pid, NULL, 0);
    CHECK(lock_release(h) == LOCK_OK, "release other");
    /* nothing was taken by the cancelled wait: the lock is free */
    o.timeout = 0;
    o.cancel_fd = -1;
    CHECK(lock_acquire(other, &o, &h2) == LOCK_OK, "free after cancel");
    lock_release(h2);
    close(p[0]);
    close(p[1]);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    snprintf(target, sizeof target, "sem:%s", argv[1]);
    snprintf(other, sizeof other, "sem:%s-other", argv[1]);
    test_static_strings();
    test_null_and_invalid();
    test_acquire_release();
    test_cancel();
    unsigned removed = 0;
    CHECK(lock_gc(NULL, &removed) == LOCK_OK, "gc all local");
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
