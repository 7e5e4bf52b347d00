/*
 * Uncontended acquire+release cycles through lockfn's C ABI (include/lockfn.h), in one process.
 *
 *   cabi_cycle TARGET N        prints {"ns_per_op": F, "n": N}
 *
 * Build (benches/run.sh does it): cc -O2 -Iinclude benches/cabi_cycle.c -Ltarget/release -llockfn
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lockfn.h"

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cycle(const char *target, const lock_options *o) {
    lock_handle *h = NULL;
    int rc = lock_acquire(target, o, &h);
    if (rc != LOCK_OK) {
        fprintf(stderr, "cabi_cycle: lock_acquire %s: %s (%s)\n", target, lock_strerror(rc),
                lock_last_error());
        return rc;
    }
    rc = lock_release(h);
    if (rc != LOCK_OK) {
        fprintf(stderr, "cabi_cycle: lock_release %s: %s (%s)\n", target, lock_strerror(rc),
                lock_last_error());
        return rc;
    }
    return 0;
}

int main(int argc, char **argv) {
    lock_options o;
    long n, i;
    double t0;
    if (argc != 3 || (n = atol(argv[2])) <= 0) {
        fprintf(stderr, "usage: cabi_cycle TARGET N\n");
        return 2;
    }
    lock_options_init(&o);
    if (cycle(argv[1], &o)) /* warm-up: connection set-up is not a cycle */
        return 1;
    t0 = now_ns();
    for (i = 0; i < n; i++)
        if (cycle(argv[1], &o))
            return 1;
    printf("{\"ns_per_op\": %.1f, \"n\": %ld}\n", (now_ns() - t0) / (double)n, n);
    return 0;
}
