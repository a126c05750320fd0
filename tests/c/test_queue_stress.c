/* Concurrency stress of pp_queue, written to be run under
 * ThreadSanitizer (scripts/sanitize.sh tsan) as well as ASan (CTest in
 * scripts/test.sh).  No Python.
 *
 * Every test checks conservation: each message pushed successfully is
 * seen exactly once, by a consumer, a remover or the final drain; and
 * each consumer sees any one producer's messages in the order they were
 * pushed (the queue is FIFO).
 *
 *   test_queue_stress [mpmc|close_race|remove_race|drain_race]
 */
#include "poolparty/pp.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

enum { PRODUCERS = 4, CONSUMERS = 4, PER_PRODUCER = 20000 };

/* seen[producer][index]: how many times that message was taken. */
static atomic_int seen[PRODUCERS][PER_PRODUCER];
/* pushed[producer][index]: 1 if push returned PP_OK. */
static atomic_int pushed[PRODUCERS][PER_PRODUCER];

static pp_queue *queue;

static void
reset(void)
{
    for (int p = 0; p < PRODUCERS; p++) {
        for (int i = 0; i < PER_PRODUCER; i++) {
            atomic_store(&seen[p][i], 0);
            atomic_store(&pushed[p][i], 0);
        }
    }
    CHECK(pp_queue_new(&queue) == PP_OK);
    pp_queue_set_linger(queue, 100 * 1000, 16);
}

static void
take(pp_msg *m, uint64_t last[PRODUCERS], int check_order)
{
    CHECK(m->job < PRODUCERS && m->index < PER_PRODUCER);
    /* The payload is written by the producer before the push: reading
     * it here is a data race unless the queue orders the two. */
    uint64_t payload;
    memcpy(&payload, m->data, sizeof(payload));
    CHECK(payload == m->job * 1000003u + m->index);
    if (check_order) {
        CHECK(last[m->job] == UINT64_MAX || m->index > last[m->job]);
        last[m->job] = m->index;
    }
    atomic_fetch_add(&seen[m->job][m->index], 1);
    pp_msg_free(m);
}

static pp_msg *
make(uint64_t producer, uint64_t index)
{
    uint64_t payload = producer * 1000003u + index;
    pp_msg *m = pp_msg_new(producer, index, PP_TASK_CALL, &payload,
                           sizeof(payload));
    CHECK(m != NULL);
    return m;
}

/* Push until done or the queue refuses; refused messages stay ours. */
static void *
producer(void *arg)
{
    uint64_t p = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < PER_PRODUCER; i++) {
        pp_msg *m = make(p, i);
        /* Odd producers push lazily: a lingering pop_all (see reset)
         * must still take their messages. */
        int rc = p % 2 ? pp_queue_push_lazy(queue, m)
                       : pp_queue_push(queue, m);
        if (rc != PP_OK) {
            pp_msg_free(m);
            break;
        }
        atomic_store(&pushed[p][i], 1);
    }
    return NULL;
}

/* Alternate pop (with and without timeouts) and pop_all until closed. */
static void *
consumer(void *arg)
{
    int id = (int)(uintptr_t)arg;
    uint64_t last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) {
        last[p] = UINT64_MAX;
    }
    for (unsigned n = 0;; n++) {
        int rc;
        if ((n + (unsigned)id) % 3 == 0) {
            pp_msg *chain = NULL;
            size_t count = 0;
            rc = pp_queue_pop_all(queue, 1000000, &chain, &count);
            if (rc == PP_OK) {
                size_t walked = 0;
                while (chain != NULL) {
                    pp_msg *next = chain->next;
                    take(chain, last, 1);
                    chain = next;
                    walked++;
                }
                CHECK(walked == count);
            }
        }
        else {
            pp_msg *m = NULL;
            rc = pp_queue_pop(queue, n % 2 ? -1 : 1000000, &m);
            if (rc == PP_OK) {
                take(m, last, 1);
            }
        }
        if (rc == PP_ECLOSED) {
            return NULL;
        }
        CHECK(rc == PP_OK || rc == PP_ETIMEDOUT);
    }
}

/* Remove arbitrary (job, index) pairs while everyone else works. */
static void *
remover(void *arg)
{
    (void)arg;
    uint64_t last[PRODUCERS];
    unsigned seed = 12345;
    for (int p = 0; p < PRODUCERS; p++) {
        last[p] = UINT64_MAX;
    }
    for (int n = 0; n < 20000; n++) {
        seed = seed * 1103515245u + 12345u;
        uint64_t job = (seed >> 8) % PRODUCERS;
        uint64_t index = (seed >> 4) % PER_PRODUCER;
        pp_msg *m = NULL;
        if (pp_queue_remove(queue, job, index, &m) == PP_OK) {
            CHECK(m->job == job && m->index == index);
            take(m, last, 0);
        }
        (void)pp_queue_length(queue);
    }
    return NULL;
}

static void
run(pthread_t *threads, int n, void *(*fn)(void *), int offset)
{
    for (int i = 0; i < n; i++) {
        CHECK(pthread_create(&threads[i], NULL, fn,
                             (void *)(uintptr_t)(i + offset)) == 0);
    }
}

static void
join_all(pthread_t *threads, int n)
{
    for (int i = 0; i < n; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
    }
}

/* Whatever is still queued is taken by the final drain; then every
 * message pushed must have been seen exactly once, and no message that
 * was refused may have been seen. */
static void
finish(void)
{
    uint64_t last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) {
        last[p] = UINT64_MAX;
    }
    pp_msg *rest = pp_queue_drain(queue);
    while (rest != NULL) {
        pp_msg *next = rest->next;
        take(rest, last, 1);
        rest = next;
    }
    CHECK(pp_queue_length(queue) == 0);
    long total = 0;
    for (int p = 0; p < PRODUCERS; p++) {
        for (int i = 0; i < PER_PRODUCER; i++) {
            int s = atomic_load(&seen[p][i]);
            CHECK(s == atomic_load(&pushed[p][i]));
            total += s;
        }
    }
    pp_queue_free(queue);
    queue = NULL;
    printf("  %ld messages accounted for\n", total);
}

/* Many producers and consumers; closed only once all pushes are in. */
static void
test_mpmc(void)
{
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    reset();
    run(cons, CONSUMERS, consumer, 0);
    run(prod, PRODUCERS, producer, 0);
    join_all(prod, PRODUCERS);
    pp_queue_close(queue);
    join_all(cons, CONSUMERS);
    for (int p = 0; p < PRODUCERS; p++) {
        CHECK(atomic_load(&pushed[p][PER_PRODUCER - 1]) == 1);
    }
    finish();
}

/* close() while producers are still pushing: every push that succeeded
 * is delivered, none that was refused is, and pushes stop at the close. */
static void
test_close_race(void)
{
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    reset();
    run(cons, CONSUMERS, consumer, 0);
    run(prod, PRODUCERS, producer, 0);
    /* Close once some messages have gone through. */
    while (pp_queue_length(queue) < 100 && !atomic_load(&pushed[0][5000])) {
    }
    pp_queue_close(queue);
    join_all(prod, PRODUCERS);
    join_all(cons, CONSUMERS);
    /* Pushes form a prefix per producer: nothing after a refusal. */
    for (int p = 0; p < PRODUCERS; p++) {
        int refused = 0;
        for (int i = 0; i < PER_PRODUCER; i++) {
            if (!atomic_load(&pushed[p][i])) {
                refused = 1;
            }
            else {
                CHECK(!refused);
            }
        }
    }
    pp_msg *m = make(0, 0);
    CHECK(pp_queue_push(queue, m) == PP_ECLOSED); /* still ours */
    pp_msg_free(m);
    finish();
}

/* pp_queue_remove (Executor's cancel) racing producers and consumers. */
static void
test_remove_race(void)
{
    pthread_t prod[PRODUCERS], cons[CONSUMERS], rem[2];
    reset();
    run(cons, CONSUMERS, consumer, 0);
    run(rem, 2, remover, 0);
    run(prod, PRODUCERS, producer, 0);
    join_all(prod, PRODUCERS);
    join_all(rem, 2);
    pp_queue_close(queue);
    join_all(cons, CONSUMERS);
    finish();
}

/* drain (terminate's and shutdown(cancel_futures=True)'s) racing
 * everyone, repeatedly. */
static void *
drainer(void *arg)
{
    (void)arg;
    uint64_t last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) {
        last[p] = UINT64_MAX;
    }
    for (int n = 0; n < 2000; n++) {
        pp_msg *chain = pp_queue_drain(queue);
        while (chain != NULL) {
            pp_msg *next = chain->next;
            take(chain, last, 1);
            chain = next;
        }
    }
    return NULL;
}

static void
test_drain_race(void)
{
    pthread_t prod[PRODUCERS], cons[CONSUMERS], drain[1];
    reset();
    run(cons, CONSUMERS, consumer, 0);
    run(drain, 1, drainer, 0);
    run(prod, PRODUCERS, producer, 0);
    join_all(prod, PRODUCERS);
    join_all(drain, 1);
    pp_queue_close(queue);
    join_all(cons, CONSUMERS);
    finish();
}

static const struct {
    const char *name;
    void (*fn)(void);
} TESTS[] = {
    {"mpmc", test_mpmc},
    {"close_race", test_close_race},
    {"remove_race", test_remove_race},
    {"drain_race", test_drain_race},
};

int
main(int argc, char **argv)
{
    int ran = 0;
    for (size_t i = 0; i < sizeof(TESTS) / sizeof(TESTS[0]); i++) {
        if (argc > 1 && strcmp(argv[1], TESTS[i].name) != 0) {
            continue;
        }
        printf("%s\n", TESTS[i].name);
        TESTS[i].fn();
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "?");
        return 2;
    }
    return 0;
}
