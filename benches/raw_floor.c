/*
 * The raw floor of one lock cycle on the local services, timed alone, in one process:
 *
 *   raw_floor sem NAME N     sem_wait + sem_post on the POSIX semaphore /NAME (created, value 1)
 *   raw_floor mkdir DIR N    mkdir DIR + rmdir DIR (what a pmxcfs lock costs at least)
 *
 * prints {"ns_per_op": F, "n": N}.  Build: cc -O2 benches/raw_floor.c -o raw_floor -pthread
 */
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    long n, i;
    double t0;
    if (argc != 4 || (n = atol(argv[3])) <= 0) {
        fprintf(stderr, "usage: raw_floor sem NAME N | mkdir DIR N\n");
        return 2;
    }
    if (strcmp(argv[1], "sem") == 0) {
        char name[256];
        sem_t *s;
        snprintf(name, sizeof name, "/%s", argv[2]);
        s = sem_open(name, O_CREAT, 0600, 1);
        if (s == SEM_FAILED) {
            perror("sem_open");
            return 1;
        }
        t0 = now_ns();
        for (i = 0; i < n; i++) {
            if (sem_wait(s) || sem_post(s)) {
                perror("sem_wait/sem_post");
                return 1;
            }
        }
        printf("{\"ns_per_op\": %.1f, \"n\": %ld}\n", (now_ns() - t0) / (double)n, n);
        sem_close(s);
        sem_unlink(name);
        return 0;
    }
    if (strcmp(argv[1], "mkdir") == 0) {
        t0 = now_ns();
        for (i = 0; i < n; i++) {
            if (mkdir(argv[2], 0755) || rmdir(argv[2])) {
                perror("mkdir/rmdir");
                return 1;
            }
        }
        printf("{\"ns_per_op\": %.1f, \"n\": %ld}\n", (now_ns() - t0) / (double)n, n);
        return 0;
    }
    fprintf(stderr, "raw_floor: unknown mode %s\n", argv[1]);
    return 2;
}
