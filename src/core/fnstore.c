/* The engine's store of by-value functions: a function sent by value
 * (a lambda, a closure, a notebook's function) is copied into its
 * engine once, and its tasks carry only the reference's header
 * ("\0v<token>\0module\0qualname\0"); a worker that has not unpickled
 * that token yet reads the bytes from here (pp__engine_function_bytes).
 *
 * Lifetime: an entry is held by every task queued or running that
 * was submitted with it, each task recording its hold (pp_msg.fn_held:
 * hold at submit, release when the task is dropped or its worker is
 * done with it).  When the last hold goes the entry stays,
 * idle, so that submitting the same function again (submit() then
 * result(), in a loop) does not copy it again; idle entries are freed
 * oldest first once they add up to more than PP_FN_IDLE_BYTES.  So the
 * store holds what in-flight tasks need plus at most that much, however
 * many distinct closures a program submits.  A worker reads an entry
 * only through the task it runs, which holds it, so the bytes cannot go
 * away under it; a task that holds none (its header sent by another
 * path) reads nothing.
 *
 * Raw memory, no PyObject; store->lock is a leaf (no GIL is waited for
 * and no other lock is taken under it), so any thread may call these
 * with any GIL or none. */
#include "pp_internal.h"

struct pp_fn_entry {
    /* Its list, held or idle (s->lock): an idle entry is freed with
     * no search (trim_locked takes the idle list's last), and a task's
     * release finds its entry through the task (pp_msg.fn_held). */
    struct pp_fn_entry *prev, *next;
    uint64_t token;
    size_t holds; /* tasks queued or running that hold it; 0: idle */
    size_t size;
    unsigned char data[];
};

/* Needs: nothing.  See pp_internal.h. */
size_t
pp__fn_header(const unsigned char *data, size_t size, uint64_t *token)
{
    if (size < 3 || data[0] != 0 || data[1] != 'v') {
        return 0;
    }
    uint64_t value = 0;
    size_t i = 2;
    for (; i < size && data[i] >= '0' && data[i] <= '9'; i++) {
        value = value * 10 + (uint64_t)(data[i] - '0');
    }
    /* token, module and qualname, each ended by a NUL */
    int nuls = 0;
    for (; i < size; i++) {
        if (data[i] == 0 && ++nuls == 3) {
            if (token != NULL) {
                *token = value;
            }
            return i + 1;
        }
    }
    return 0;
}

/* Needs: nothing.  See pp_internal.h. */
size_t
pp__fn_task_part(const void *func, size_t size)
{
    size_t header = pp__fn_header(func, size, NULL);
    return header != 0 ? header : size;
}

void
pp__fn_store_init(pp_fn_store *s)
{
    memset(s, 0, sizeof(*s));
    atomic_init(&s->fetches, 0);
    pthread_mutex_init(&s->lock, NULL);
}

/* Free a list of entries.  Needs: nothing (nobody else sees them). */
static void
free_entries(pp_fn_entry *entry)
{
    while (entry != NULL) {
        pp_fn_entry *next = entry->next;
        PyMem_RawFree(entry);
        entry = next;
    }
}

void
pp__fn_store_fini(pp_fn_store *s)
{
    free_entries(s->held);
    free_entries(s->idle);
    s->held = s->idle = s->idle_last = NULL;
    pthread_mutex_destroy(&s->lock);
}

/* Take entry off its list (the held one unless idle).  Needs: s->lock. */
static void
unlink_locked(pp_fn_store *s, pp_fn_entry *entry, int idle)
{
    if (entry->prev != NULL) {
        entry->prev->next = entry->next;
    }
    else if (idle) {
        s->idle = entry->next;
    }
    else {
        s->held = entry->next;
    }
    if (entry->next != NULL) {
        entry->next->prev = entry->prev;
    }
    else if (idle) {
        s->idle_last = entry->prev;
    }
    if (idle) {
        s->idle_bytes -= entry->size;
    }
    entry->prev = entry->next = NULL;
}

/* Put entry at the front of a list: the idle one (the most recently
 * released first) or the held one.  Needs: s->lock. */
static void
push_locked(pp_fn_store *s, pp_fn_entry *entry, int idle)
{
    pp_fn_entry **head = idle ? &s->idle : &s->held;
    entry->prev = NULL;
    entry->next = *head;
    if (*head != NULL) {
        (*head)->prev = entry;
    }
    else if (idle) {
        s->idle_last = entry;
    }
    *head = entry;
    if (idle) {
        s->idle_bytes += entry->size;
    }
}

/* The entry for token, held or idle, or NULL.  Needs: s->lock. */
static pp_fn_entry *
find_locked(pp_fn_store *s, uint64_t token)
{
    for (int idle = 0; idle < 2; idle++) {
        for (pp_fn_entry *e = idle ? s->idle : s->held; e; e = e->next) {
            if (e->token == token) {
                return e;
            }
        }
    }
    return NULL;
}

/* Any GIL or none.  See pp_internal.h. */
int
pp__fn_store_hold(pp_fn_store *s, pp_msg *first, size_t count,
                  const unsigned char *func, size_t size)
{
    uint64_t token;
    size_t header = pp__fn_header(func, size, &token);
    if (header == 0 || header == size) {
        return PP_OK; /* no by-value bytes: nothing to keep for them */
    }
    pthread_mutex_lock(&s->lock);
    pp_fn_entry *entry = find_locked(s, token);
    if (entry == NULL) {
        /* The copy is made under the lock so that two submitters of a
         * new function do not both store it; it happens once per
         * function per engine. */
        entry = PyMem_RawMalloc(sizeof(pp_fn_entry) + (size - header));
        if (entry == NULL) {
            pthread_mutex_unlock(&s->lock);
            return PP_ENOMEM;
        }
        entry->token = token;
        entry->holds = 0;
        entry->size = size - header;
        memcpy(entry->data, func + header, entry->size);
        push_locked(s, entry, 0);
        s->count++;
        s->bytes += entry->size;
        s->copies++;
        s->copied_bytes += entry->size;
    }
    else if (entry->holds == 0) {
        unlink_locked(s, entry, 1);
        push_locked(s, entry, 0);
    }
    entry->holds += count;
    pthread_mutex_unlock(&s->lock);
    /* One hold per task, each recorded in its task: a release drops
     * exactly the holds that were taken, whatever a task's header
     * says (a task sent by another path names an entry but holds
     * none).  Set before the tasks are queued: no other thread sees
     * them yet. */
    for (pp_msg *task = first; count > 0; task = task->next, count--) {
        task->fn_held = entry;
    }
    return PP_OK;
}

/* Free idle entries, least recently released first, until they add up
 * to PP_FN_IDLE_BYTES at most; onto *gone, to be freed outside the
 * lock.  Needs: s->lock. */
static void
trim_locked(pp_fn_store *s, pp_fn_entry **gone)
{
    while (s->idle_bytes > PP_FN_IDLE_BYTES && s->idle_last != NULL) {
        pp_fn_entry *oldest = s->idle_last;
        unlink_locked(s, oldest, 1);
        s->count--;
        s->bytes -= oldest->size;
        oldest->next = *gone;
        *gone = oldest;
    }
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__fn_store_release_chain(pp_fn_store *s, pp_msg *first)
{
    pp_msg *task = first;
    while (task != NULL && task->fn_held == NULL) {
        task = task->next; /* most tasks hold nothing: no lock for them */
    }
    if (task == NULL) {
        return;
    }
    pp_fn_entry *gone = NULL;
    pthread_mutex_lock(&s->lock);
    for (; task != NULL; task = task->next) {
        pp_fn_entry *entry = task->fn_held;
        task->fn_held = NULL;
        if (entry != NULL && --entry->holds == 0) {
            unlink_locked(s, entry, 0);
            push_locked(s, entry, 1);
        }
    }
    trim_locked(s, &gone);
    pthread_mutex_unlock(&s->lock);
    free_entries(gone);
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__fn_store_release(pp_fn_store *s, pp_msg *task)
{
    if (task->fn_held == NULL) {
        return;
    }
    pp_msg *next = task->next;
    task->next = NULL;
    pp__fn_store_release_chain(s, task);
    task->next = next;
}

/* Any GIL or none.  See pp_internal.h. */
int
pp__fn_store_find(pp_fn_store *s, const pp_msg *task,
                  const unsigned char **data, size_t *size)
{
    const pp_fn_entry *entry = task->fn_held;
    if (entry == NULL) {
        return PP_ENOTFOUND;
    }
    /* Held by the task: neither freed nor changed meanwhile. */
    *data = entry->data;
    *size = entry->size;
    atomic_fetch_add_explicit(&s->fetches, 1, memory_order_relaxed);
    return PP_OK;
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__fn_store_stats(pp_fn_store *s, pp_fn_stats *out)
{
    pthread_mutex_lock(&s->lock);
    out->entries = s->count;
    out->bytes = s->bytes;
    out->idle_bytes = s->idle_bytes;
    out->copies = s->copies;
    out->copied_bytes = s->copied_bytes;
    out->fetches = atomic_load_explicit(&s->fetches, memory_order_relaxed);
    pthread_mutex_unlock(&s->lock);
}
