/* The engine's store of by-value functions: a function sent by value
 * (a lambda, a closure, a notebook's function) is copied into its
 * engine once, and its tasks carry only the reference's header
 * ("\0v<token>\0module\0qualname\0"); a worker that has not unpickled
 * that token yet reads the bytes from here (pp__engine_function_bytes).
 *
 * Lifetime: an entry is held by every task queued or running that
 * names it (hold at submit, release when the task is dropped or its
 * worker is done with it).  When the last hold goes the entry stays,
 * idle, so that submitting the same function again (submit() then
 * result(), in a loop) does not copy it again; idle entries are freed
 * oldest first once they add up to more than PP_FN_IDLE_BYTES.  So the
 * store holds what in-flight tasks need plus at most that much, however
 * many distinct closures a program submits.  A worker reads an entry
 * only while running a task that holds it, so the bytes cannot go away
 * under it.
 *
 * Raw memory, no PyObject; store->lock is a leaf (no GIL is waited for
 * and no other lock is taken under it), so any thread may call these
 * with any GIL or none. */
#include "pp_internal.h"

struct pp_fn_entry {
    struct pp_fn_entry *next; /* most recently released first */
    uint64_t token;
    size_t holds; /* tasks queued or running that name it; 0: idle */
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

/* The token of a task whose function part is a by-value header alone
 * (its bytes in the store), in *token: 1, else 0. */
static int
stored_token(const pp_msg *task, uint64_t *token)
{
    return (task->kind & PP_TASK_FUNC_BY_NAME) && task->func_size > 0 &&
           pp__fn_header(task->data, task->func_size, token) ==
               task->func_size;
}

void
pp__fn_store_init(pp_fn_store *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
}

void
pp__fn_store_fini(pp_fn_store *s)
{
    pp_fn_entry *entry = s->entries;
    while (entry != NULL) {
        pp_fn_entry *next = entry->next;
        PyMem_RawFree(entry);
        entry = next;
    }
    s->entries = NULL;
    pthread_mutex_destroy(&s->lock);
}

/* The entry for token, or NULL.  Needs: s->lock. */
static pp_fn_entry *
find_locked(pp_fn_store *s, uint64_t token, pp_fn_entry ***link)
{
    pp_fn_entry **at = &s->entries;
    for (; *at != NULL; at = &(*at)->next) {
        if ((*at)->token == token) {
            break;
        }
    }
    if (link != NULL) {
        *link = at;
    }
    return *at;
}

/* Any GIL or none.  See pp_internal.h. */
int
pp__fn_store_hold(pp_fn_store *s, const pp_msg *first, size_t count,
                  const unsigned char *func, size_t size)
{
    uint64_t token, task_token;
    size_t header = pp__fn_header(func, size, &token);
    if (header == 0 || header == size || !stored_token(first, &task_token) ||
        task_token != token) {
        return PP_OK; /* no by-value bytes, or tasks that carry them */
    }
    pthread_mutex_lock(&s->lock);
    pp_fn_entry *entry = find_locked(s, token, NULL);
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
        s->idle_bytes += entry->size; /* held just below */
        memcpy(entry->data, func + header, entry->size);
        entry->next = s->entries;
        s->entries = entry;
        s->count++;
        s->bytes += entry->size;
        s->copies++;
        s->copied_bytes += entry->size;
    }
    if (entry->holds == 0) {
        s->idle_bytes -= entry->size;
    }
    entry->holds += count;
    pthread_mutex_unlock(&s->lock);
    return PP_OK;
}

/* Unlink *link's entry and put it on the chain *gone to be freed
 * outside the lock.  Needs: s->lock. */
static void
unlink_locked(pp_fn_store *s, pp_fn_entry **link, pp_fn_entry **gone)
{
    pp_fn_entry *entry = *link;
    *link = entry->next;
    s->count--;
    s->bytes -= entry->size;
    if (entry->holds == 0) {
        s->idle_bytes -= entry->size;
    }
    entry->next = *gone;
    *gone = entry;
}

/* Free idle entries, least recently released first, until they add up
 * to PP_FN_IDLE_BYTES at most.  Needs: s->lock. */
static void
trim_locked(pp_fn_store *s, pp_fn_entry **gone)
{
    while (s->idle_bytes > PP_FN_IDLE_BYTES) {
        pp_fn_entry **oldest = NULL;
        for (pp_fn_entry **at = &s->entries; *at != NULL; at = &(*at)->next) {
            if ((*at)->holds == 0) {
                oldest = at;
            }
        }
        if (oldest == NULL) {
            break; /* cannot happen: idle_bytes counts idle entries */
        }
        unlink_locked(s, oldest, gone);
    }
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__fn_store_release_chain(pp_fn_store *s, const pp_msg *first)
{
    for (const pp_msg *task = first; task != NULL; task = task->next) {
        uint64_t token;
        if (!stored_token(task, &token)) {
            continue;
        }
        pp_fn_entry **link, *gone = NULL;
        pthread_mutex_lock(&s->lock);
        pp_fn_entry *entry = find_locked(s, token, &link);
        if (entry != NULL && --entry->holds == 0) {
            /* Idle now: to the front, the most recently released. */
            *link = entry->next;
            entry->next = s->entries;
            s->entries = entry;
            s->idle_bytes += entry->size;
            trim_locked(s, &gone);
        }
        pthread_mutex_unlock(&s->lock);
        while (gone != NULL) {
            pp_fn_entry *next = gone->next;
            PyMem_RawFree(gone);
            gone = next;
        }
    }
}

/* Any GIL or none.  See pp_internal.h. */
void
pp__fn_store_release(pp_fn_store *s, pp_msg *task)
{
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
    uint64_t token;
    if (!stored_token(task, &token)) {
        return PP_ENOTFOUND;
    }
    pthread_mutex_lock(&s->lock);
    pp_fn_entry *entry = find_locked(s, token, NULL);
    if (entry != NULL) {
        *data = entry->data;
        *size = entry->size;
        s->fetches++;
    }
    pthread_mutex_unlock(&s->lock);
    return entry != NULL ? PP_OK : PP_ENOTFOUND;
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
    out->fetches = s->fetches;
    pthread_mutex_unlock(&s->lock);
}
