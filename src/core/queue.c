/* pp_queue: an unbounded multi-producer multi-consumer FIFO of pp_msg.
 *
 * Locking: one mutex guards every field of the struct and of the
 * waiters queued on it; `nonempty` is signalled under it whenever a
 * message is queued or the queue closes.  The mutex is a leaf lock:
 * nothing else is locked while holding it, and no Python API is called
 * under it, so it can never take part in a lock-order cycle with a GIL.
 *
 * Hand-off: a thread blocked in pp_queue_pop waits in line as a
 * pp_waiter, and a push gives the message straight to the first one
 * in line instead of queueing it.  From that moment the message is the
 * consumer's: drain and remove no longer see it, as if the consumer had
 * already woken and taken it.  Without this, whether a task submitted
 * to an idle pool counts as started (cancel() fails) or not yet
 * (shutdown(cancel_futures=True) drops it) depended on how soon the
 * woken thread got a CPU -- tens of microseconds to milliseconds on a
 * busy machine, during which every task stayed cancellable.  (3.13's
 * queue.SimpleQueue hands off the same way.)
 *
 * Lingering (pp_queue_set_linger): a pop_all consumer that has just
 * taken several messages waits at most `linger_ns` for the next ones
 * (one message taken: they trickle in, and lingering would only add a
 * wake-up at its deadline), and a lazy
 * push (pp_queue_push_lazy) does not wake it before then unless
 * `linger_batch` messages are queued.  So producers of many small
 * messages wake it once per batch instead of once per message, and no
 * message waits longer than linger_ns for a consumer that is asleep:
 * its wait ends on its own (the deadline is not pushed back by later
 * pushes).  A wait that ends with nothing queued goes back to being
 * woken by every push.  An ordinary push always wakes.
 *
 * Waits use CLOCK_MONOTONIC so that a wall-clock jump neither cuts a
 * timeout short nor stretches it. */
#include "poolparty/pp.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>

/* A thread blocked in pp_queue_pop, on its own stack.  Guarded by the
 * queue's mutex. */
typedef struct pp_waiter {
    struct pp_waiter *next;
    pthread_cond_t wake; /* signalled on hand-off and on close */
    pp_msg *msg;         /* handed over by a push; then the waiter's */
} pp_waiter;

struct pp_queue {
    pthread_mutex_t mutex;
    pthread_cond_t nonempty; /* pop_all's: signalled on push and close */
    pp_msg *head;            /* oldest message, or NULL */
    pp_msg *tail;            /* newest message, or NULL */
    /* Written under the mutex, read without it too (pp_queue_length:
     * a worker asks after every task whether more wait, and that lock
     * round per task was all the question cost). */
    atomic_size_t length;
    int closed;
    /* Threads in pp_queue_pop waiting for a hand-off, longest first.
     * Only while head is NULL: a push serves them before it queues. */
    pp_waiter *waiters;
    pp_waiter *waiters_tail;
    size_t nwaiters;
    /* Lingering, see the top of this file.  linger_ns 0: off. */
    int64_t linger_ns;
    size_t linger_batch;
    int warm;      /* pop_all's last call took several messages: its next
                      wait lingers */
    size_t lingering; /* 1 while pop_all waits with lazy pushes leaving
                         it asleep (a size_t for count_now) */
};

/* q->length, without the mutex: a snapshot, exact under it. */
static inline size_t
length_of(pp_queue *q)
{
    return atomic_load_explicit(&q->length, memory_order_relaxed);
}

/* Change q->length by delta.  Needs q->mutex (the only writers hold
 * it, so a load and a store make no read-modify-write). */
static inline void
add_length(pp_queue *q, ptrdiff_t delta)
{
    size_t length = (size_t)((ptrdiff_t)length_of(q) + delta);
    atomic_store_explicit(&q->length, length, memory_order_relaxed);
}

/* PP_OK or PP_ENOMEM.  No lock (the queue is not shared yet). */
int
pp_queue_new(pp_queue **out)
{
    pp_queue *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return PP_ENOMEM;
    }
    atomic_init(&q->length, 0);
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        goto error_free;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&q->nonempty, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        goto error_free;
    }
    if (pthread_mutex_init(&q->mutex, NULL) != 0) {
        pthread_cond_destroy(&q->nonempty);
        goto error_free;
    }
    *out = q;
    return PP_OK;

error_free:
    free(q);
    return PP_ENOMEM;
}

/* No thread may use q any more. */
void
pp_queue_free(pp_queue *q)
{
    if (q == NULL) {
        return;
    }
    pp_msg_free_chain(q->head);
    pthread_cond_destroy(&q->nonempty);
    pthread_mutex_destroy(&q->mutex);
    free(q);
}

static int push_chain(pp_queue *q, pp_msg *first, size_t count, int lazy);

/* Takes q->mutex. */
int
pp_queue_push(pp_queue *q, pp_msg *msg)
{
    msg->next = NULL;
    return pp_queue_push_chain(q, msg, 1);
}

static void unlink_waiter_locked(pp_queue *q, pp_waiter *w);

/* Takes q->mutex. */
void
pp_queue_set_linger(pp_queue *q, int64_t linger_ns, size_t batch)
{
    pthread_mutex_lock(&q->mutex);
    q->linger_ns = linger_ns > 0 ? linger_ns : 0;
    q->linger_batch = batch > 0 ? batch : 1;
    pthread_mutex_unlock(&q->mutex);
}

/* Takes q->mutex. */
int
pp_queue_push_lazy(pp_queue *q, pp_msg *msg)
{
    msg->next = NULL;
    return push_chain(q, msg, 1, 1);
}

/* Takes q->mutex.  One lock round and one wake-up for a whole batch:
 * a map's chunks are queued together instead of paying both per chunk. */
int
pp_queue_push_chain(pp_queue *q, pp_msg *first, size_t count)
{
    return push_chain(q, first, count, 0);
}

/* pp_queue_push_chain, or with `lazy` pp_queue_push_lazy's: a consumer
 * lingering in pop_all is left asleep (see the top of this file).  Takes
 * q->mutex. */
static int
push_chain(pp_queue *q, pp_msg *first, size_t count, int lazy)
{
    if (first == NULL || count == 0) {
        return PP_OK;
    }
    int rc = PP_OK;
    pp_msg *last;
    pthread_mutex_lock(&q->mutex);
    if (q->closed) {
        rc = PP_ECLOSED;
        goto done;
    }
    /* Hand the first messages to the threads waiting in pp_queue_pop,
     * one each, longest-waiting first. */
    while (q->waiters != NULL && first != NULL) {
        pp_waiter *w = q->waiters;
        unlink_waiter_locked(q, w);
        w->next = NULL;
        w->msg = first;
        first = first->next;
        w->msg->next = NULL;
        count--;
        pthread_cond_signal(&w->wake);
    }
    if (first == NULL) {
        goto done;
    }
    last = first;
    while (last->next != NULL) {
        last = last->next;
    }
    if (q->tail == NULL) {
        q->head = first;
    }
    else {
        q->tail->next = first;
    }
    q->tail = last;
    add_length(q, (ptrdiff_t)count);
    /* Only pop_all waits on `nonempty`, and each takes everything:
     * waking one is enough.  A lingering one wakes on its own by its
     * deadline, or now for a full batch. */
    if (!lazy || !q->lingering || length_of(q) >= q->linger_batch) {
        pthread_cond_signal(&q->nonempty);
    }
done:
    pthread_mutex_unlock(&q->mutex);
    return rc;
}

/* Absolute CLOCK_MONOTONIC deadline `timeout_ns` from now. */
static struct timespec
deadline_after(int64_t timeout_ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t nsec = (int64_t)ts.tv_nsec + timeout_ns % 1000000000;
    ts.tv_sec += (time_t)(timeout_ns / 1000000000 + nsec / 1000000000);
    ts.tv_nsec = (long)(nsec % 1000000000);
    return ts;
}

/* Wait until q has a message or is closed.  Needs q->mutex held.
 * PP_OK when a message is there, PP_ECLOSED, or PP_ETIMEDOUT. */
static int
wait_nonempty_locked(pp_queue *q, int64_t timeout_ns)
{
    struct timespec deadline;
    if (timeout_ns > 0) {
        deadline = deadline_after(timeout_ns);
    }
    while (q->head == NULL) {
        if (q->closed) {
            return PP_ECLOSED;
        }
        if (timeout_ns == 0) {
            return PP_ETIMEDOUT;
        }
        if (timeout_ns < 0) {
            pthread_cond_wait(&q->nonempty, &q->mutex);
        }
        else if (pthread_cond_timedwait(&q->nonempty, &q->mutex,
                                        &deadline) == ETIMEDOUT &&
                 q->head == NULL) {
            return q->closed ? PP_ECLOSED : PP_ETIMEDOUT;
        }
    }
    return PP_OK;
}

/* Take the oldest queued message.  Needs q->mutex and a non-empty
 * queue. */
static pp_msg *
take_head_locked(pp_queue *q)
{
    pp_msg *msg = q->head;
    q->head = msg->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    add_length(q, -1);
    msg->next = NULL;
    return msg;
}

/* Take `node`, which follows `prev` (NULL: it is the head), out of the
 * singly linked list from `head` to `tail`. */
#define UNLINK(head, tail, prev, node)                                     \
    do {                                                                   \
        if ((prev) == NULL) {                                              \
            (head) = (node)->next;                                         \
        }                                                                  \
        else {                                                             \
            (prev)->next = (node)->next;                                   \
        }                                                                  \
        if ((tail) == (node)) {                                            \
            (tail) = (prev);                                               \
        }                                                                  \
    } while (0)

/* Take `w` out of the line of waiters.  Needs q->mutex. */
static void
unlink_waiter_locked(pp_queue *q, pp_waiter *w)
{
    pp_waiter *prev = NULL;
    for (pp_waiter *it = q->waiters; it != NULL; prev = it, it = it->next) {
        if (it != w) {
            continue;
        }
        UNLINK(q->waiters, q->waiters_tail, prev, w);
        q->nwaiters--;
        return;
    }
}

/* Wait in line for a hand-off (see the top of this file).  Needs
 * q->mutex, an empty open queue and timeout_ns != 0.  PP_OK with *out
 * set, PP_ECLOSED or PP_ETIMEDOUT. */
static int
wait_for_handoff_locked(pp_queue *q, int64_t timeout_ns, pp_msg **out)
{
    pp_waiter w = {.next = NULL, .msg = NULL};
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w.wake, &attr);
    pthread_condattr_destroy(&attr);
    if (q->waiters_tail == NULL) {
        q->waiters = &w;
    }
    else {
        q->waiters_tail->next = &w;
    }
    q->waiters_tail = &w;
    q->nwaiters++;

    struct timespec deadline;
    if (timeout_ns > 0) {
        deadline = deadline_after(timeout_ns);
    }
    int timed_out = 0;
    while (w.msg == NULL && !q->closed && !timed_out) {
        if (timeout_ns < 0) {
            pthread_cond_wait(&w.wake, &q->mutex);
        }
        else {
            timed_out = pthread_cond_timedwait(&w.wake, &q->mutex,
                                               &deadline) == ETIMEDOUT;
        }
    }
    int rc = PP_OK;
    if (w.msg != NULL) {
        *out = w.msg; /* a push already took w out of the line */
    }
    else {
        unlink_waiter_locked(q, &w);
        rc = q->closed ? PP_ECLOSED : PP_ETIMEDOUT;
    }
    pthread_cond_destroy(&w.wake);
    return rc;
}

/* Takes q->mutex; blocks: call with no GIL held. */
int
pp_queue_pop(pp_queue *q, int64_t timeout_ns, pp_msg **out)
{
    int rc;
    pthread_mutex_lock(&q->mutex);
    if (q->head != NULL) {
        *out = take_head_locked(q);
        rc = PP_OK;
    }
    else if (q->closed) {
        rc = PP_ECLOSED;
    }
    else if (timeout_ns == 0) {
        rc = PP_ETIMEDOUT;
    }
    else {
        rc = wait_for_handoff_locked(q, timeout_ns, out);
    }
    pthread_mutex_unlock(&q->mutex);
    return rc;
}

/* Takes q->mutex; blocks: call with no GIL held. */
int
pp_queue_pop_all(pp_queue *q, int64_t timeout_ns, pp_msg **out,
                 size_t *count)
{
    pthread_mutex_lock(&q->mutex);
    int rc = PP_ETIMEDOUT;
    if (q->head == NULL && !q->closed && timeout_ns != 0 && q->warm &&
        q->linger_ns > 0) {
        /* Linger: lazy pushes leave this wait alone until its deadline
         * (or a full batch, or an ordinary push). */
        int64_t linger = timeout_ns > 0 && timeout_ns < q->linger_ns
                             ? timeout_ns
                             : q->linger_ns;
        q->lingering = 1;
        rc = wait_nonempty_locked(q, linger);
        q->lingering = 0;
        if (rc == PP_ETIMEDOUT) {
            /* Nothing came: every push wakes the next wait. */
            q->warm = 0;
            if (timeout_ns > 0) {
                timeout_ns = timeout_ns > linger ? timeout_ns - linger : 0;
            }
        }
    }
    if (rc == PP_ETIMEDOUT) {
        rc = wait_nonempty_locked(q, timeout_ns);
    }
    if (rc == PP_OK) {
        *out = q->head;
        *count = length_of(q);
        q->head = q->tail = NULL;
        /* One message at a time: completions trickle in, and a wait that
         * lingered would only time out.  More: a backlog, worth
         * batching. */
        q->warm = *count > 1;
        add_length(q, -(ptrdiff_t)*count);
    }
    pthread_mutex_unlock(&q->mutex);
    return rc;
}

/* Takes q->mutex. */
void
pp_queue_close(pp_queue *q)
{
    pthread_mutex_lock(&q->mutex);
    q->closed = 1;
    pthread_cond_broadcast(&q->nonempty);
    for (pp_waiter *w = q->waiters; w != NULL; w = w->next) {
        pthread_cond_signal(&w->wake);
    }
    pthread_mutex_unlock(&q->mutex);
}

/* Takes q->mutex. */
pp_msg *
pp_queue_drain(pp_queue *q)
{
    pthread_mutex_lock(&q->mutex);
    pp_msg *first = q->head;
    q->head = q->tail = NULL;
    add_length(q, -(ptrdiff_t)length_of(q));
    pthread_mutex_unlock(&q->mutex);
    return first;
}

/* Takes q->mutex.  Linear in the queue's length: cancellation is rare
 * next to push and pop, which stay O(1). */
int
pp_queue_remove(pp_queue *q, uint64_t job, uint64_t index, pp_msg **out)
{
    int rc = PP_ENOTFOUND;
    pthread_mutex_lock(&q->mutex);
    pp_msg *prev = NULL;
    for (pp_msg *m = q->head; m != NULL; prev = m, m = m->next) {
        if (m->job != job || m->index != index) {
            continue;
        }
        UNLINK(q->head, q->tail, prev, m);
        add_length(q, -1);
        m->next = NULL;
        *out = m;
        rc = PP_OK;
        break;
    }
    pthread_mutex_unlock(&q->mutex);
    return rc;
}

/* Takes q->mutex.  One pass, however many of the job's messages are
 * queued: closing a long map early removes them all at once. */
pp_msg *
pp_queue_remove_job(pp_queue *q, uint64_t job)
{
    pp_msg *removed = NULL, *removed_tail = NULL;
    pthread_mutex_lock(&q->mutex);
    pp_msg *prev = NULL;
    pp_msg *m = q->head;
    while (m != NULL) {
        pp_msg *next = m->next;
        if (m->job != job) {
            prev = m;
            m = next;
            continue;
        }
        UNLINK(q->head, q->tail, prev, m);
        add_length(q, -1);
        m->next = NULL;
        if (removed_tail == NULL) {
            removed = m;
        }
        else {
            removed_tail->next = m;
        }
        removed_tail = m;
        m = next;
    }
    pthread_mutex_unlock(&q->mutex);
    return removed;
}

/* One of q's counts, read under q->mutex (a snapshot). */
static size_t
count_now(pp_queue *q, const size_t *count)
{
    pthread_mutex_lock(&q->mutex);
    size_t n = *count;
    pthread_mutex_unlock(&q->mutex);
    return n;
}

/* Takes q->mutex. */
int
pp_queue_lingering(pp_queue *q)
{
    return count_now(q, &q->lingering) != 0;
}

/* No lock: a snapshot. */
size_t
pp_queue_length(pp_queue *q)
{
    return length_of(q);
}

/* Takes q->mutex. */
size_t
pp_queue_waiting(pp_queue *q)
{
    return count_now(q, &q->nwaiters);
}
