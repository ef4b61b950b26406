/* The LMDB ceiling of benches/growth.py: rdirdb's key shape written by a plain C loop.
 *
 *   lmdb_loop DIR RECORDS BATCH VALUE_SIZE CONTAINERS STEP [writemap] [sync]
 *
 * Writes RECORDS records into a fresh environment in DIR, BATCH per write
 * transaction, each batch sorted by key first (as rdirdb sorts its batches).
 * A key is 64 bytes, like rdirdb's canonical chunk key: 32 bytes of a container
 * id (one of CONTAINERS) then 32 random bytes of chunk id; a value is
 * VALUE_SIZE bytes. "writemap" opens the environment with MDB_WRITEMAP, "sync"
 * makes every commit durable (otherwise MDB_NOSYNC | MDB_NOMETASYNC).
 *
 * Before every STEP records, and before the end, it waits for a line on stdin
 * (the driver runs its contenders in turns; EOF means "go on"); after every
 * STEP records it prints one line of JSON, and one more at the end:
 *   {"records": R, "seconds": S, "user": U, "system": Y}
 *   {"done": R, "max_rss": BYTES}
 * with the wall-clock and CPU seconds spent writing so far (generating the
 * records and waiting are outside them). Built by growth.py with the
 * system gcc against liblmdb: gcc -O2 -o lmdb_loop lmdb_loop.c -llmdb
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define KEY_SIZE 64
#define MAP_SIZE ((size_t)64 << 30) /* address space only; the file grows as it fills */

static void fail(int rc, const char *what)
{
    fprintf(stderr, "lmdb_loop: %s: %s\n", what, mdb_strerror(rc));
    exit(1);
}

/* A small, fast, seedable generator (splitmix64): the same records on every run. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_random(uint64_t *state, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = next_random(state);
        memcpy(out + i, &r, n - i < 8 ? n - i : 8);
    }
}

static int compare_keys(const void *a, const void *b)
{
    return memcmp(a, b, KEY_SIZE);
}

/* Wait for the driver's go (a line on stdin); at EOF, do not wait any more. */
static void wait_turn(void)
{
    static int eof = 0;
    char line[64];
    if (!eof && !fgets(line, sizeof line, stdin))
        eof = 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* User and system CPU seconds of this process so far. */
static void cpu_seconds(double *user, double *system)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *system = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: %s DIR RECORDS BATCH VALUE_SIZE CONTAINERS STEP [writemap] [sync]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long records = atol(argv[2]), batch = atol(argv[3]), value_size = atol(argv[4]);
    long containers = atol(argv[5]), step = atol(argv[6]);
    unsigned int flags = MDB_NOTLS | MDB_NORDAHEAD;
    int sync = 0;
    for (int i = 7; i < argc; i++) {
        if (strcmp(argv[i], "writemap") == 0)
            flags |= MDB_WRITEMAP;
        else if (strcmp(argv[i], "sync") == 0)
            sync = 1;
        else {
            fprintf(stderr, "lmdb_loop: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!sync)
        flags |= MDB_NOSYNC | MDB_NOMETASYNC;
    if (records <= 0 || batch <= 0 || value_size < 8 || containers <= 0 || step <= 0) {
        fprintf(stderr, "lmdb_loop: sizes must be positive, VALUE_SIZE at least 8\n");
        return 2;
    }

    /* Container ids: CONTAINERS random 32-byte strings. */
    uint64_t state = 42;
    unsigned char *container_ids = malloc(containers * 32);
    unsigned char *keys = malloc(batch * KEY_SIZE);
    unsigned char *value = malloc(value_size);
    if (!container_ids || !keys || !value) {
        fprintf(stderr, "lmdb_loop: out of memory\n");
        return 1;
    }
    fill_random(&state, container_ids, containers * 32);
    fill_random(&state, value, value_size);

    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc;
    if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_mapsize(env, MAP_SIZE)) ||
        (rc = mdb_env_open(env, dir, flags, 0644)))
        fail(rc, "mdb_env_open");
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, NULL, 0, &dbi)) ||
        (rc = mdb_txn_commit(txn)))
        fail(rc, "mdb_dbi_open");

    double timed = 0, user = 0, system = 0, user0, system0, user1, system1;
    long written = 0, next_report = step;
    int waiting = 1; /* for the driver's go, at the start of every STEP */
    printf("{\"ready\": true}\n");
    fflush(stdout);
    while (written < records) {
        if (waiting) {
            wait_turn();
            waiting = 0;
        }
        long n = records - written < batch ? records - written : batch;
        for (long i = 0; i < n; i++) {
            unsigned char *key = keys + i * KEY_SIZE;
            memcpy(key, container_ids + (next_random(&state) % containers) * 32, 32);
            fill_random(&state, key + 32, 32);
        }
        cpu_seconds(&user0, &system0);
        double start = now();
        qsort(keys, n, KEY_SIZE, compare_keys);
        if ((rc = mdb_txn_begin(env, NULL, 0, &txn)))
            fail(rc, "mdb_txn_begin");
        for (long i = 0; i < n; i++) {
            MDB_val k = {KEY_SIZE, keys + i * KEY_SIZE}, v = {value_size, value};
            /* Vary the value a little so that pages are not all alike. */
            memcpy(value, &written, sizeof written);
            if ((rc = mdb_put(txn, dbi, &k, &v, 0)))
                fail(rc, "mdb_put");
        }
        if ((rc = mdb_txn_commit(txn)))
            fail(rc, "mdb_txn_commit");
        timed += now() - start;
        cpu_seconds(&user1, &system1);
        user += user1 - user0;
        system += system1 - system0;
        written += n;
        if (written >= next_report || written == records) {
            printf("{\"records\": %ld, \"seconds\": %.6f, \"user\": %.3f, \"system\": %.3f}\n",
                   written, timed, user, system);
            fflush(stdout);
            next_report += step;
            waiting = 1;
        }
    }
    wait_turn(); /* the driver asks for the end once every contender is there */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"done\": %ld, \"max_rss\": %ld}\n", written, ru.ru_maxrss * 1024L);
    mdb_env_close(env);
    free(container_ids);
    free(keys);
    free(value);
    return 0;
}
