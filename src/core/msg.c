/* Messages: the only containers that carry work between interpreters.
 *
 * Memory comes from malloc rather than PyMem_RawMalloc: messages are
 * created and freed by threads that may hold any interpreter's GIL or
 * none, and the C unit tests link this file without libpython. */
#include "poolparty/pp.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* A new message owning a copy of `data`; NULL when out of memory or
 * when `size` would overflow.  Any thread, no lock. */
pp_msg *
pp_msg_new(uint64_t job, uint64_t index, uint32_t kind, const void *data,
           size_t size)
{
    if (size > SIZE_MAX - sizeof(pp_msg)) {
        return NULL;
    }
    pp_msg *msg = malloc(sizeof(pp_msg) + size);
    if (msg == NULL) {
        return NULL;
    }
    msg->next = NULL;
    msg->job = job;
    msg->index = index;
    msg->kind = kind;
    msg->worker = 0;
    msg->size = size;
    msg->func_size = 0;
    msg->pins = NULL;
    msg->fn_held = NULL;
    if (data != NULL && size > 0) {
        memcpy(msg->data, data, size);
    }
    return msg;
}

/* NULL when out of memory or when the sizes would overflow.  Any thread,
 * no lock. */
pp_msg *
pp_msg_new_task(uint64_t job, uint64_t index, uint32_t kind,
                const void *func, size_t func_size, const void *args,
                size_t args_size)
{
    if (func_size > SIZE_MAX - args_size) {
        return NULL;
    }
    pp_msg *msg = pp_msg_new(job, index, kind, NULL, func_size + args_size);
    if (msg == NULL) {
        return NULL;
    }
    if (func_size) {
        memcpy(msg->data, func, func_size);
    }
    if (args_size) {
        memcpy(msg->data + func_size, args, args_size);
    }
    msg->func_size = func_size;
    return msg;
}

/* One for the process: every pinned message is the codec's.  Atomic:
 * each interpreter's first pin owner sets it (the same function). */
static _Atomic(void (*)(struct pp_pin *)) pin_dropper;

void
pp_msg_set_pin_dropper(void (*drop)(struct pp_pin *first))
{
    atomic_store(&pin_dropper, drop);
}

/* Any thread, no lock. */
void
pp_msg_free(pp_msg *msg)
{
    if (msg != NULL && msg->pins != NULL) {
        atomic_load(&pin_dropper)(msg->pins);
    }
    free(msg);
}

/* Any thread, no lock; the chain must not be in a queue. */
void
pp_msg_free_chain(pp_msg *first)
{
    while (first != NULL) {
        pp_msg *next = first->next;
        pp_msg_free(first);
        first = next;
    }
}

const char *
pp_strerror(int code)
{
    switch (code) {
    case PP_OK:
        return "success";
    case PP_ENOMEM:
        return "out of memory";
    case PP_ECLOSED:
        return "the pool is closed";
    case PP_ETIMEDOUT:
        return "timed out";
    case PP_ENOTFOUND:
        return "not found";
    case PP_EINTERP:
        return "could not create a subinterpreter";
    case PP_ETHREAD:
        return "could not start a native thread";
    case PP_ESTATE:
        return "not allowed in the pool's current state";
    case PP_EINVAL:
        return "invalid argument";
    default:
        return "unknown poolparty error";
    }
}
