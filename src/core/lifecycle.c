/* The engine's lifecycle rules, as a pure function so that they can be
 * tested without threads or Python (tests/c/test_core.c). */
#include "poolparty/pp.h"

/* No lock: pure. */
int
pp_engine_transition(pp_engine_state state, pp_engine_event event,
                     pp_engine_state *next)
{
    switch (event) {
    case PP_EV_SUBMIT:
        /* Only a running pool takes work: after close() the caller
         * promised no more, after terminate() it would be dropped. */
        if (state != PP_ENGINE_RUNNING) {
            return PP_ESTATE;
        }
        *next = state;
        return PP_OK;
    case PP_EV_CLOSE:
        /* close() after terminate() must not resurrect queued work. */
        *next = state == PP_ENGINE_RUNNING ? PP_ENGINE_CLOSED : state;
        return PP_OK;
    case PP_EV_TERMINATE:
        *next = state == PP_ENGINE_STOPPED ? state : PP_ENGINE_TERMINATING;
        return PP_OK;
    case PP_EV_JOINED:
        /* Workers only all exit once told to stop. */
        if (state == PP_ENGINE_RUNNING) {
            return PP_ESTATE;
        }
        *next = PP_ENGINE_STOPPED;
        return PP_OK;
    }
    return PP_EINVAL;
}
