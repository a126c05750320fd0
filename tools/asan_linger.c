/* Preloaded last by scripts/sanitize.sh: keeps a process alive for a
 * moment after exit() has run its atexit handlers and CPython has
 * finalized, so that a sanitizer report being written by another thread
 * (a worker thread that CPython ends during finalization) is complete
 * instead of cut off after its first line when the process disappears. */
#include <time.h>

__attribute__((destructor)) static void
linger(void)
{
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);
}
