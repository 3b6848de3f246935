/* Per-thread scratch buffers (scratch.h): a pthread key whose destructor
 * frees a thread's buffers when it exits. */
#include "core/scratch.h"

#include <pthread.h>
#include <stdlib.h>

struct scratch {
    void *buffer[SCRATCH_SLOTS];
    size_t bytes[SCRATCH_SLOTS];
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free(void *p)
{
    struct scratch *s = p;
    for (int i = 0; i < SCRATCH_SLOTS; i++) free(s->buffer[i]);
    free(s);
}

static void scratch_init(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

void *scratch_get(int slot, size_t bytes)
{
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_key_ok || slot < 0 || slot >= SCRATCH_SLOTS) return NULL;
    struct scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return NULL;
        if (pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->bytes[slot] < bytes || !s->buffer[slot]) {
        free(s->buffer[slot]); /* the contents need not survive: no realloc copy */
        s->buffer[slot] = malloc(bytes ? bytes : 1);
        s->bytes[slot] = s->buffer[slot] ? bytes : 0;
    }
    return s->buffer[slot];
}
