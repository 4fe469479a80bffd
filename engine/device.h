/* What accelerators this process can use. Without CUDA compiled in, or without a device, the list
 * is empty: callers (inspect, the GPU tests) treat that as "no GPU here", never as an error. */
#ifndef CINFER_DEVICE_H
#define CINFER_DEVICE_H

#include <stddef.h>

typedef struct ci_device_info {
    char name[256];
    size_t free_bytes;
    size_t total_bytes;
    int compute_major, compute_minor;
} ci_device_info;

/* Fills up to max entries and returns how many devices there are (0 when none). */
int ci_cuda_devices(ci_device_info *devices, int max);
/* 1 when this build has the CUDA code compiled in. */
int ci_cuda_compiled(void);

#endif
