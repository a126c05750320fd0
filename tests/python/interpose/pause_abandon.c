/* Test-only LD_PRELOAD library: holds pp__engine_abandon() still at the
 * moment it counts the workers it abandoned, so that a test can let one
 * of them exit right then (test_reliability_terminate.py,
 * test_abandoned_count_is_never_read_wrong).
 *
 * The moment: the first static mutex of _poolparty (abandoned_lock in
 * engine.c: a mutex inside _poolparty's own image, not in an engine's
 * heap memory) that a thread locks after _poolparty called
 * pthread_detach() on it (abandon detaches each worker thread).  There
 * it writes $PP_PAUSE_DIR/paused and waits (up to 30 s) for
 * $PP_PAUSE_DIR/resume before locking.  Everything else passes through.
 *
 * Built by the test with the running CPython's compiler; no Python. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int (*real_detach)(pthread_t);
static int (*real_lock)(pthread_mutex_t *);
static __thread int armed;

__attribute__((constructor)) static void init(void);

static void
init(void)
{
    real_detach = (int (*)(pthread_t))dlsym(RTLD_NEXT, "pthread_detach");
    real_lock =
        (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
}

/* 1 if `addr` lies in the image of _poolparty's shared object. */
static int
in_poolparty(const void *addr)
{
    Dl_info info;
    return dladdr(addr, &info) != 0 && info.dli_fname != NULL &&
           strstr(info.dli_fname, "_poolparty") != NULL;
}

static int
exists(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void
pause_here(void)
{
    const char *dir = getenv("PP_PAUSE_DIR");
    if (dir == NULL) {
        return;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/paused", dir);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    if (fd >= 0) {
        close(fd);
    }
    for (int i = 0; i < 30000 && !exists(dir, "resume"); i++) {
        usleep(1000);
    }
}

int
pthread_detach(pthread_t thread)
{
    if (real_detach == NULL) {
        init();
    }
    if (in_poolparty(__builtin_return_address(0))) {
        armed = 1;
    }
    return real_detach(thread);
}

int
pthread_mutex_lock(pthread_mutex_t *mutex)
{
    if (real_lock == NULL) {
        init(); /* called before our constructor ran */
    }
    if (armed && in_poolparty(mutex)) {
        armed = 0;
        pause_here();
    }
    return real_lock(mutex);
}
