/* Take a lock, show who holds it, release it.
 *   gcc hello_lock.c $(pkg-config --cflags --libs lockfn) -o hello_lock
 *   ./hello_lock sem:hello */
#include <lockfn.h>
#include <stdio.h>

int main(int argc, char **argv) {
    const char *target = argc > 1 ? argv[1] : "sem:hello";
    lock_options opts;
    lock_options_init(&opts);
    opts.timeout = 10;               /* seconds; < 0 waits forever, 0 tries once */
    opts.holder = "hello_lock.c";    /* free text shown by `lockfn status` */

    lock_handle *lock;
    int rc = lock_acquire(target, &opts, &lock);
    if (rc != LOCK_OK) {
        fprintf(stderr, "%s: %s: %s\n", target, lock_strerror(rc), lock_last_error());
        return rc == LOCK_BUSY ? 1 : 2;
    }
    printf("locked %s token %llu\n", target, (unsigned long long)lock_token(lock));

    char *json;
    if (lock_status(target, &json) == LOCK_OK) {
        printf("%s\n", json);
        lock_string_free(json);
    }
    rc = lock_release(lock);
    if (rc != LOCK_OK) {
        fprintf(stderr, "release: %s: %s\n", lock_strerror(rc), lock_last_error());
        return 2;
    }
    printf("released %s\n", target);
    return 0;
}
