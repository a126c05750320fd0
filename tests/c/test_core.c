/* C unit tests of the parts of the core that need no Python: messages,
 * the queue, the engine's lifecycle rules.  One runner binary; CTest
 * runs each test by name (`test_core queue_fifo`), or all with no
 * argument. */
#include "poolparty/pp.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ASSERT_EQ(a, b)                                                     \
    do {                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ != b_) {                                                     \
            fprintf(stderr, "%s:%d: ASSERT_EQ(%s, %s) failed: %lld != %lld\n", \
                    __FILE__, __LINE__, #a, #b, a_, b_);                    \
            exit(1);                                                        \
        }                                                                   \
    } while (0)
#define ASSERT(cond) ASSERT_EQ(!!(cond), 1)

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static pp_msg *
msg(uint64_t job, uint64_t index)
{
    pp_msg *m = pp_msg_new(job, index, PP_TASK_CALL, "abc", 3);
    ASSERT(m != NULL);
    return m;
}

static void
test_msg(void)
{
    pp_msg *m = pp_msg_new(7, 9, PP_DONE_OK, "hello", 5);
    ASSERT(m != NULL);
    ASSERT_EQ(m->job, 7);
    ASSERT_EQ(m->index, 9);
    ASSERT_EQ(m->kind, PP_DONE_OK);
    ASSERT_EQ(m->size, 5);
    ASSERT_EQ(memcmp(m->data, "hello", 5), 0);
    ASSERT(m->next == NULL);
    pp_msg_free(m);
    /* A size that would overflow the header must fail, not wrap. */
    ASSERT(pp_msg_new(0, 0, 0, NULL, SIZE_MAX) == NULL);
    ASSERT(strcmp(pp_strerror(PP_ECLOSED), "the pool is closed") == 0);
    ASSERT(strcmp(pp_strerror(12345), "unknown poolparty error") == 0);
}

/* Blocks of this thread's message cache right now, and caches alive. */
static void
cache_stats(uint64_t *blocks, uint64_t *caches)
{
    pp_msg_cache_stats(blocks, caches);
}

static void
test_msg_cache(void)
{
    uint64_t blocks0, caches0, blocks, caches;
    pp_msg_free(msg(0, 0)); /* this thread's cache exists from here on */
    cache_stats(&blocks0, &caches0);
    /* A small message freed on its own thread is the next one's block. */
    pp_msg *a = msg(1, 1);
    void *where = a;
    pp_msg_free(a);
    a = msg(2, 2);
    ASSERT(a == where);
    /* Growing past the block moves the data to a block of its own
     * size; shrinking back stays there. */
    memset(a->data, 'x', 3);
    pp_msg *big = pp_msg_resize(a, 100000);
    ASSERT(big != NULL);
    ASSERT(big->home == NULL);
    ASSERT_EQ(big->job, 2);
    ASSERT_EQ(memcmp(big->data, "xxx", 3), 0);
    big->data[99999] = 'y';
    pp_msg *same = pp_msg_resize(big, 10);
    ASSERT(same != NULL && same->home == NULL);
    pp_msg_free(same);
    /* A block grown within its room stays where it is. */
    pp_msg *small = pp_msg_alloc(8);
    ASSERT(small != NULL && small->home != NULL);
    ASSERT(pp_msg_resize(small, 200) == small);
    small->pins = NULL;
    pp_msg_free(small);
    /* A big message never comes from a cache. */
    pp_msg *huge = pp_msg_new(0, 0, 0, NULL, 1 << 20);
    ASSERT(huge != NULL && huge->home == NULL);
    pp_msg_free(huge);
    /* Thousands made and freed: the cache keeps a bounded number. */
    enum { N = 5000 };
    pp_msg **many = malloc(N * sizeof(*many));
    ASSERT(many != NULL);
    for (int i = 0; i < N; i++) {
        many[i] = msg(3, (uint64_t)i);
    }
    cache_stats(&blocks, &caches);
    ASSERT(blocks >= blocks0 + N - 1);
    for (int i = 0; i < N; i++) {
        pp_msg_free(many[i]);
    }
    free(many);
    cache_stats(&blocks, &caches);
    ASSERT(blocks <= 512);
    ASSERT_EQ(caches, caches0);
}

/* The other side of test_msg_cache_threads: frees what it pops. */
typedef struct {
    pp_queue *q;
    int freed;
} cache_consumer;

static void *
free_popped(void *arg)
{
    cache_consumer *c = arg;
    pp_msg *m;
    while (pp_queue_pop(c->q, -1, &m) == PP_OK) {
        pp_msg_free(m);
        c->freed++;
    }
    return NULL;
}

/* Makes messages for the consumers and exits with many still queued. */
static void *
make_and_exit(void *arg)
{
    pp_queue *q = arg;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 3000; i++) {
            pp_msg *m = pp_msg_new(9, (uint64_t)i, 0, "abcdef", 6);
            ASSERT(m != NULL);
            ASSERT_EQ(pp_queue_push(q, m), PP_OK);
        }
    }
    return NULL;
}

static void
test_msg_cache_threads(void)
{
    uint64_t blocks0, caches0, blocks, caches;
    pp_msg_free(msg(0, 0));
    cache_stats(&blocks0, &caches0);
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    cache_consumer consumers[2] = {{q, 0}, {q, 0}};
    pthread_t threads[2], maker;
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(pthread_create(&threads[i], NULL, free_popped,
                                 &consumers[i]),
                  0);
    }
    /* Makers that exit while their blocks are out, one after another
     * and two at once: each cache goes with its last block. */
    for (int i = 0; i < 4; i++) {
        ASSERT_EQ(pthread_create(&maker, NULL, make_and_exit, q), 0);
        if (i % 2 == 0) {
            pthread_t other;
            ASSERT_EQ(pthread_create(&other, NULL, make_and_exit, q), 0);
            pthread_join(other, NULL);
        }
        pthread_join(maker, NULL);
    }
    pp_queue_close(q);
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
    }
    ASSERT_EQ(consumers[0].freed + consumers[1].freed, 6 * 9000);
    pp_queue_free(q);
    cache_stats(&blocks, &caches);
    ASSERT_EQ(caches, caches0);
    ASSERT_EQ(blocks, blocks0);
}

static void
test_queue_fifo(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    for (uint64_t i = 0; i < 100; i++) {
        ASSERT_EQ(pp_queue_push(q, msg(i, i * 2)), PP_OK);
    }
    ASSERT_EQ(pp_queue_length(q), 100);
    for (uint64_t i = 0; i < 50; i++) {
        pp_msg *m;
        ASSERT_EQ(pp_queue_pop(q, 0, &m), PP_OK);
        ASSERT_EQ(m->job, i);
        ASSERT_EQ(m->index, i * 2);
        pp_msg_free(m);
    }
    pp_msg *chain;
    size_t count = 0;
    ASSERT_EQ(pp_queue_pop_all(q, 0, &chain, &count), PP_OK);
    ASSERT_EQ(count, 50);
    uint64_t expect = 50;
    for (pp_msg *m = chain; m != NULL; m = m->next) {
        ASSERT_EQ(m->job, expect++);
    }
    ASSERT_EQ(expect, 100);
    pp_msg_free_chain(chain);
    ASSERT_EQ(pp_queue_length(q), 0);
    /* Messages left in a freed queue are freed with it (ASan checks). */
    ASSERT_EQ(pp_queue_push(q, msg(1, 1)), PP_OK);
    pp_queue_free(q);
}

/* A chain lands after what was queued, in order, counted; a closed
 * queue refuses it whole and leaves it to the caller. */
static void
test_queue_push_chain(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    ASSERT_EQ(pp_queue_push_chain(q, NULL, 0), PP_OK);
    ASSERT_EQ(pp_queue_push(q, msg(0, 0)), PP_OK);
    pp_msg *first = NULL, *last = NULL;
    for (uint64_t i = 1; i <= 5; i++) {
        pp_msg *m = msg(i, i);
        if (last == NULL) {
            first = m;
        }
        else {
            last->next = m;
        }
        last = m;
    }
    ASSERT_EQ(pp_queue_push_chain(q, first, 5), PP_OK);
    ASSERT_EQ(pp_queue_length(q), 6);
    /* The tail moved to the chain's end: a push lands after it. */
    ASSERT_EQ(pp_queue_push(q, msg(6, 6)), PP_OK);
    for (uint64_t i = 0; i <= 6; i++) {
        pp_msg *m;
        ASSERT_EQ(pp_queue_pop(q, 0, &m), PP_OK);
        ASSERT_EQ(m->job, i);
        pp_msg_free(m);
    }
    ASSERT_EQ(pp_queue_length(q), 0);
    /* Into an empty queue, then refused once closed. */
    first = msg(7, 0);
    first->next = msg(7, 1);
    ASSERT_EQ(pp_queue_push_chain(q, first, 2), PP_OK);
    pp_queue_close(q);
    pp_msg *refused = msg(8, 0);
    refused->next = msg(8, 1);
    ASSERT_EQ(pp_queue_push_chain(q, refused, 2), PP_ECLOSED);
    pp_msg_free_chain(refused); /* still the caller's */
    pp_msg *chain;
    size_t count = 0;
    ASSERT_EQ(pp_queue_pop_all(q, 0, &chain, &count), PP_OK);
    ASSERT_EQ(count, 2);
    ASSERT_EQ(chain->index, 0);
    ASSERT_EQ(chain->next->index, 1);
    pp_msg_free_chain(chain);
    pp_queue_free(q);
}

/* Every queued message of one job goes, in order, the rest stay in
 * order, and the tail is right for the next push. */
static void
test_queue_remove_job(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    ASSERT(pp_queue_remove_job(q, 1) == NULL);
    for (uint64_t i = 0; i < 10; i++) {
        ASSERT_EQ(pp_queue_push(q, msg(i % 3 == 0 ? 7 : 8, i)), PP_OK);
    }
    pp_msg *removed = pp_queue_remove_job(q, 7); /* 0, 3, 6, 9: the tail */
    uint64_t expect[] = {0, 3, 6, 9};
    size_t n = 0;
    for (pp_msg *m = removed; m != NULL; m = m->next) {
        ASSERT_EQ(m->job, 7);
        ASSERT_EQ(m->index, expect[n++]);
    }
    ASSERT_EQ(n, 4);
    pp_msg_free_chain(removed);
    ASSERT_EQ(pp_queue_length(q), 6);
    ASSERT_EQ(pp_queue_push(q, msg(9, 10)), PP_OK);
    uint64_t left[] = {1, 2, 4, 5, 7, 8, 10};
    for (size_t i = 0; i < 7; i++) {
        pp_msg *m;
        ASSERT_EQ(pp_queue_pop(q, 0, &m), PP_OK);
        ASSERT_EQ(m->index, left[i]);
        pp_msg_free(m);
    }
    ASSERT_EQ(pp_queue_length(q), 0);
    pp_queue_free(q);
}

static void
test_queue_timeout(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    pp_msg *m = NULL;
    ASSERT_EQ(pp_queue_pop(q, 0, &m), PP_ETIMEDOUT);
    double t0 = now_s();
    ASSERT_EQ(pp_queue_pop(q, 50 * 1000 * 1000, &m), PP_ETIMEDOUT);
    /* It waited (a lower bound only: upper bounds are noise here). */
    ASSERT(now_s() - t0 >= 0.045);
    ASSERT(m == NULL);
    size_t count = 99;
    ASSERT_EQ(pp_queue_pop_all(q, 1000, &m, &count), PP_ETIMEDOUT);
    ASSERT_EQ(count, 99);
    pp_queue_free(q);
}

struct waiter {
    pp_queue *q;
    int rc;
};

static void *
wait_forever(void *arg)
{
    struct waiter *w = arg;
    pp_msg *m = NULL;
    w->rc = pp_queue_pop(w->q, -1, &m);
    pp_msg_free(m);
    return NULL;
}

static void
test_queue_close(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    /* Blocked consumers are woken by close and told PP_ECLOSED. */
    struct waiter w[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        w[i].q = q;
        w[i].rc = 1;
        ASSERT_EQ(pthread_create(&t[i], NULL, wait_forever, &w[i]), 0);
    }
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
    pp_queue_close(q);
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        ASSERT_EQ(w[i].rc, PP_ECLOSED);
    }
    /* Closed: pushes refused (caller keeps the message)... */
    pp_msg *m = msg(1, 1);
    ASSERT_EQ(pp_queue_push(q, m), PP_ECLOSED);
    pp_msg_free(m);
    pp_queue_close(q); /* idempotent */
    pp_queue_free(q);

    /* ...but what was queued before close is still delivered. */
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    ASSERT_EQ(pp_queue_push(q, msg(5, 0)), PP_OK);
    pp_queue_close(q);
    ASSERT_EQ(pp_queue_pop(q, -1, &m), PP_OK);
    ASSERT_EQ(m->job, 5);
    pp_msg_free(m);
    ASSERT_EQ(pp_queue_pop(q, -1, &m), PP_ECLOSED);
    pp_queue_free(q);
}

struct taker {
    pp_queue *q;
    int rc;
    pp_msg *m;
};

static void *
take_one(void *arg)
{
    struct taker *t = arg;
    t->rc = pp_queue_pop(t->q, -1, &t->m);
    return NULL;
}

/* A consumer waiting in pop is handed the next message at the push:
 * drain and remove, which run right after the push, no longer see it
 * (the task counts as started however late the consumer wakes). */
static void
test_queue_handoff(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    struct taker t[2] = {{q, 1, NULL}, {q, 1, NULL}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(pthread_create(&th[i], NULL, take_one, &t[i]), 0);
    }
    struct timespec pause = {0, 1000 * 1000};
    while (pp_queue_waiting(q) < 2) {
        nanosleep(&pause, NULL);
    }
    /* Three messages, two waiters: two handed off, one queued. */
    pp_msg *chain = msg(7, 0);
    chain->next = msg(7, 1);
    chain->next->next = msg(7, 2);
    ASSERT_EQ(pp_queue_push_chain(q, chain, 3), PP_OK);
    ASSERT_EQ(pp_queue_waiting(q), 0);
    ASSERT_EQ(pp_queue_length(q), 1);
    pp_msg *m = NULL;
    ASSERT_EQ(pp_queue_remove(q, 7, 0, &m), PP_ENOTFOUND);
    pp_msg *rest = pp_queue_drain(q);
    ASSERT(rest != NULL && rest->index == 2 && rest->next == NULL);
    pp_msg_free(rest);
    uint64_t seen = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(t[i].rc, PP_OK);
        seen |= 1u << t[i].m->index;
        pp_msg_free(t[i].m);
    }
    ASSERT_EQ(seen, 3); /* the first two, one each */
    /* A waiter that times out leaves the line: the next push queues. */
    ASSERT_EQ(pp_queue_pop(q, 1000 * 1000, &m), PP_ETIMEDOUT);
    ASSERT_EQ(pp_queue_waiting(q), 0);
    ASSERT_EQ(pp_queue_push(q, msg(8, 0)), PP_OK);
    ASSERT_EQ(pp_queue_length(q), 1);
    pp_queue_free(q);
}

static void
test_queue_remove(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    for (uint64_t i = 0; i < 5; i++) {
        ASSERT_EQ(pp_queue_push(q, msg(1, i)), PP_OK);
    }
    pp_msg *m;
    /* head, middle, tail, missing */
    ASSERT_EQ(pp_queue_remove(q, 1, 0, &m), PP_OK);
    ASSERT_EQ(m->index, 0);
    pp_msg_free(m);
    ASSERT_EQ(pp_queue_remove(q, 1, 2, &m), PP_OK);
    pp_msg_free(m);
    ASSERT_EQ(pp_queue_remove(q, 1, 4, &m), PP_OK);
    pp_msg_free(m);
    ASSERT_EQ(pp_queue_remove(q, 1, 4, &m), PP_ENOTFOUND);
    ASSERT_EQ(pp_queue_remove(q, 2, 1, &m), PP_ENOTFOUND);
    ASSERT_EQ(pp_queue_length(q), 2);
    /* The tail was fixed: a push after removing the tail lands last. */
    ASSERT_EQ(pp_queue_push(q, msg(1, 9)), PP_OK);
    uint64_t order[3];
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(pp_queue_pop(q, 0, &m), PP_OK);
        order[i] = m->index;
        pp_msg_free(m);
    }
    ASSERT_EQ(order[0], 1);
    ASSERT_EQ(order[1], 3);
    ASSERT_EQ(order[2], 9);
    ASSERT(pp_queue_drain(q) == NULL);
    pp_queue_free(q);
}

struct collector {
    pp_queue *q;
    int rc;
    size_t count;
};

static void *
collect_all(void *arg)
{
    struct collector *c = arg;
    pp_msg *chain = NULL;
    c->rc = pp_queue_pop_all(c->q, -1, &chain, &c->count);
    pp_msg_free_chain(chain);
    return NULL;
}

/* Start a pop_all(forever) in a thread and wait until it lingers. */
static void
start_lingering(struct collector *c, pthread_t *th, pp_queue *q)
{
    *c = (struct collector){q, 1, 0};
    ASSERT_EQ(pthread_create(th, NULL, collect_all, c), 0);
    struct timespec pause = {0, 1000 * 1000};
    while (!pp_queue_lingering(q)) {
        nanosleep(&pause, NULL);
    }
}

/* Make the queue's consumer warm: it took a backlog last. */
static void
warm(pp_queue *q)
{
    pp_msg *chain = NULL;
    size_t count = 0;
    ASSERT_EQ(pp_queue_push(q, msg(0, 0)), PP_OK);
    ASSERT_EQ(pp_queue_push(q, msg(0, 1)), PP_OK);
    ASSERT_EQ(pp_queue_pop_all(q, 0, &chain, &count), PP_OK);
    ASSERT_EQ(count, 2);
    pp_msg_free_chain(chain);
}

/* A pop_all(forever) that does not linger: a lazy push of job `job`
 * wakes it. */
static void
expect_plain_wait(pp_queue *q, uint64_t job)
{
    struct collector c = {q, 1, 0};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, collect_all, &c), 0);
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
    ASSERT(!pp_queue_lingering(q));
    ASSERT_EQ(pp_queue_push_lazy(q, msg(job, 0)), PP_OK);
    pthread_join(th, NULL);
    ASSERT_EQ(c.rc, PP_OK);
    ASSERT_EQ(c.count, 1);
}

/* Lingering: after a take, pop_all's next wait is left asleep by lazy
 * pushes until a full batch or its deadline; an ordinary push and close
 * wake it at once; a wait that found nothing makes the next one wake
 * for any push.  A wake-up that never comes hangs the test (no upper
 * bounds on time: they would be noise). */
static void
test_queue_linger(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    struct collector c;
    pthread_t th;
    /* A batch wakes it: two lazy pushes leave it asleep (its deadline
     * is 60 s away), the third wakes it and it takes all three. */
    pp_queue_set_linger(q, 60LL * 1000 * 1000 * 1000, 3);
    warm(q);
    start_lingering(&c, &th, q);
    ASSERT_EQ(pp_queue_push_lazy(q, msg(1, 0)), PP_OK);
    ASSERT_EQ(pp_queue_push_lazy(q, msg(1, 1)), PP_OK);
    ASSERT(pp_queue_lingering(q));
    ASSERT_EQ(pp_queue_push_lazy(q, msg(1, 2)), PP_OK);
    pthread_join(th, NULL);
    ASSERT_EQ(c.rc, PP_OK);
    ASSERT_EQ(c.count, 3);
    /* An ordinary push wakes it. */
    start_lingering(&c, &th, q);
    ASSERT_EQ(pp_queue_push(q, msg(2, 0)), PP_OK);
    pthread_join(th, NULL);
    ASSERT_EQ(c.rc, PP_OK);
    ASSERT_EQ(c.count, 1);
    /* So does close. */
    warm(q);
    start_lingering(&c, &th, q);
    pp_queue_close(q);
    pthread_join(th, NULL);
    ASSERT_EQ(c.rc, PP_ECLOSED);
    pp_queue_free(q);

    /* The deadline: a lazy message is taken when it passes. */
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    pp_queue_set_linger(q, 20 * 1000 * 1000, 64);
    warm(q);
    start_lingering(&c, &th, q);
    ASSERT_EQ(pp_queue_push_lazy(q, msg(3, 0)), PP_OK);
    pthread_join(th, NULL);
    ASSERT_EQ(c.rc, PP_OK);
    ASSERT_EQ(c.count, 1);
    /* One message taken: no backlog, so the next wait does not linger
     * (a push wakes it)... */
    expect_plain_wait(q, 4);
    /* ...and neither does one after a lingering wait that found nothing
     * by its deadline, here within a timeout. */
    warm(q);
    pp_msg *chain = NULL;
    size_t count = 0;
    double t0 = now_s();
    ASSERT_EQ(pp_queue_pop_all(q, 50 * 1000 * 1000, &chain, &count),
              PP_ETIMEDOUT);
    ASSERT(now_s() - t0 >= 0.045); /* the whole timeout, not the linger */
    expect_plain_wait(q, 5);
    pp_queue_free(q);
}

/* Many producers and consumers: every message arrives exactly once. */
enum { PRODUCERS = 4, CONSUMERS = 4, PER_PRODUCER = 20000 };

struct mpmc {
    pp_queue *q;
    uint64_t id;
    unsigned char *seen; /* one byte per message, set by consumers */
    pthread_mutex_t *seen_lock;
    long received;
};

static void *
producer(void *arg)
{
    struct mpmc *p = arg;
    for (uint64_t i = 0; i < PER_PRODUCER; i++) {
        ASSERT_EQ(pp_queue_push(p->q, msg(p->id, i)), PP_OK);
    }
    return NULL;
}

static void *
consumer(void *arg)
{
    struct mpmc *c = arg;
    for (;;) {
        pp_msg *m;
        int rc = pp_queue_pop(c->q, -1, &m);
        if (rc == PP_ECLOSED) {
            return NULL;
        }
        ASSERT_EQ(rc, PP_OK);
        size_t slot = (size_t)(m->job * PER_PRODUCER + m->index);
        pthread_mutex_lock(c->seen_lock);
        c->seen[slot]++;
        pthread_mutex_unlock(c->seen_lock);
        c->received++;
        pp_msg_free(m);
    }
}

static void
test_queue_threads(void)
{
    pp_queue *q;
    ASSERT_EQ(pp_queue_new(&q), PP_OK);
    unsigned char *seen = calloc(PRODUCERS * PER_PRODUCER, 1);
    pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
    struct mpmc prod[PRODUCERS], cons[CONSUMERS];
    pthread_t pt[PRODUCERS], ct[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++) {
        cons[i] = (struct mpmc){q, 0, seen, &seen_lock, 0};
        ASSERT_EQ(pthread_create(&ct[i], NULL, consumer, &cons[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        prod[i] = (struct mpmc){q, (uint64_t)i, NULL, NULL, 0};
        ASSERT_EQ(pthread_create(&pt[i], NULL, producer, &prod[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        pthread_join(pt[i], NULL);
    }
    pp_queue_close(q); /* consumers drain what is left, then stop */
    long total = 0;
    for (int i = 0; i < CONSUMERS; i++) {
        pthread_join(ct[i], NULL);
        total += cons[i].received;
    }
    ASSERT_EQ(total, PRODUCERS * PER_PRODUCER);
    for (size_t i = 0; i < PRODUCERS * PER_PRODUCER; i++) {
        ASSERT_EQ(seen[i], 1);
    }
    free(seen);
    pp_queue_free(q);
}

static void
test_lifecycle(void)
{
    pp_engine_state s;
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_RUNNING, PP_EV_SUBMIT, &s),
              PP_OK);
    ASSERT_EQ(s, PP_ENGINE_RUNNING);
    /* Workers cannot all be gone while the engine still runs. */
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_RUNNING, PP_EV_JOINED, &s),
              PP_ESTATE);
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_RUNNING, PP_EV_CLOSE, &s), PP_OK);
    ASSERT_EQ(s, PP_ENGINE_CLOSED);
    s = PP_ENGINE_RUNNING;
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_CLOSED, PP_EV_SUBMIT, &s),
              PP_ESTATE);
    ASSERT_EQ(s, PP_ENGINE_RUNNING); /* unchanged on refusal */
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_CLOSED, PP_EV_TERMINATE, &s),
              PP_OK);
    ASSERT_EQ(s, PP_ENGINE_TERMINATING);
    /* close() after terminate() does not bring queued work back. */
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_TERMINATING, PP_EV_CLOSE, &s),
              PP_OK);
    ASSERT_EQ(s, PP_ENGINE_TERMINATING);
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_TERMINATING, PP_EV_SUBMIT, &s),
              PP_ESTATE);
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_TERMINATING, PP_EV_JOINED, &s),
              PP_OK);
    ASSERT_EQ(s, PP_ENGINE_STOPPED);
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_STOPPED, PP_EV_TERMINATE, &s),
              PP_OK);
    ASSERT_EQ(s, PP_ENGINE_STOPPED);
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_STOPPED, PP_EV_SUBMIT, &s),
              PP_ESTATE);
    ASSERT_EQ(pp_engine_transition(PP_ENGINE_RUNNING, (pp_engine_event)99, &s),
              PP_EINVAL);
}

static const struct {
    const char *name;
    void (*fn)(void);
} TESTS[] = {
    {"msg", test_msg},
    {"msg_cache", test_msg_cache},
    {"msg_cache_threads", test_msg_cache_threads},
    {"queue_fifo", test_queue_fifo},
    {"queue_push_chain", test_queue_push_chain},
    {"queue_remove_job", test_queue_remove_job},
    {"queue_timeout", test_queue_timeout},
    {"queue_close", test_queue_close},
    {"queue_handoff", test_queue_handoff},
    {"queue_remove", test_queue_remove},
    {"queue_linger", test_queue_linger},
    {"queue_threads", test_queue_threads},
    {"lifecycle", test_lifecycle},
};

int
main(int argc, char **argv)
{
    int ran = 0;
    for (size_t i = 0; i < sizeof(TESTS) / sizeof(TESTS[0]); i++) {
        if (argc > 1 && strcmp(argv[1], TESTS[i].name) != 0) {
            continue;
        }
        TESTS[i].fn();
        printf("ok %s\n", TESTS[i].name);
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "?");
        return 2;
    }
    return 0;
}
