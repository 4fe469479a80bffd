/* Host memory grown on demand, 64-byte aligned like the CPU backend's buffers: where the CPU
 * communicators (comm_cpu.c: ranks as threads; comm_socket.c: ranks as processes) stage the
 * ranks' contributions and their gather buffers. */
#ifndef CINFER_COMM_STAGING_H
#define CINFER_COMM_STAGING_H

#include <stdlib.h>

typedef struct staging {
    void *data;
    size_t bytes;
} staging;

enum { STAGING_ALIGNMENT = 64 };

/* Grows s to hold bytes; 0 when out of memory (s unchanged). */
static inline int staging_grow(staging *s, size_t bytes) {
    if (bytes <= s->bytes) return 1;
    const size_t rounded = (bytes + STAGING_ALIGNMENT - 1) / STAGING_ALIGNMENT * STAGING_ALIGNMENT;
    void *data = aligned_alloc(STAGING_ALIGNMENT, rounded);
    if (!data) return 0;
    free(s->data);
    s->data = data;
    s->bytes = rounded;
    return 1;
}

#endif
