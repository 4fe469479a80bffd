/* What accelerators this process can use, and the entry points of the CUDA backend that the
 * engine's C code calls. Without CUDA compiled in (kernels/device_none.c), or without a device,
 * the list is empty and the entry points say so: callers (inspect, the GPU tests) treat that as
 * "no GPU here", never as a crash. */
#ifndef CINFER_DEVICE_H
#define CINFER_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "../include/cinfer.h"
#include "../common/random_weights.h"
#include "../common/tensor.h"

/* Fills up to max entries (cinfer.h's struct: the public cinfer_cuda_devices is this call) and
 * returns how many devices there are (0 when none). */
int ci_cuda_devices(cinfer_device_info *devices, int max);
/* 1 when this build has the CUDA code compiled in. */
int ci_cuda_compiled(void);

/* CINFER_OK when CUDA device `device` exists and can run; else the message says why. */
cinfer_status ci_cuda_available(int device);

/* 1 when the CUDA attention kind can run a model with this head_dim, standard or differential,
 * with a KV cache of this dtype, on CUDA device `device` (whose shared memory per block bounds the
 * flash kernels); 0 without CUDA. */
int ci_cuda_attention_supports(cinfer_attention kind, int head_dim, int differential,
                               ci_dtype cache_dtype, int device);

struct ci_backend;
/* A CUDA backend on one device: its own stream, cuBLAS handle and (decode) graph. */
cinfer_status ci_cuda_backend_create(int device, struct ci_backend **out);

/* One tensor of a model's weights for ci_cuda_upload_weights: host bytes (a view into the mapped
 * checkpoint) to copy, or a random model's draw to make on the device (draw not NULL; the
 * tensor's data is then a placeholder, not read). */
typedef struct ci_weight_upload {
    ci_tensor *tensor; /* on return: data and dtype name the device copy */
    const ci_random_draw *draw;
} ci_weight_upload;

/* Checks that the tensors fit in device `device`'s free memory (the message names what they are:
 * `what`, e.g. "the weights of llama-8b in bf16"), then places them all in one allocation,
 * matrices in matrix_dtype and vectors in F32, and points each tensor at its device copy. Copies
 * go up through a bounded pinned staging buffer, in the order given (file order reads the mapped
 * shards front to back); draws are made in place. *block is the allocation, freed with
 * ci_cuda_free_weights. */
cinfer_status ci_cuda_upload_weights(int device, ci_dtype matrix_dtype, const char *what,
                                     ci_weight_upload *list, int n, void **block, size_t *bytes);
/* Frees an allocation of ci_cuda_upload_weights; NULL is nothing. */
void ci_cuda_free_weights(void *block);
/* Free and total bytes of device `device`; CINFER_ERR_UNSUPPORTED when there is none. */
cinfer_status ci_cuda_memory(int device, size_t *free_bytes, size_t *total_bytes);

/* The check before anything is allocated: CINFER_ERR_MEMORY naming both figures when needed
 * exceeds free. `what` says what the memory is for ("model weights in bf16"). */
cinfer_status ci_memory_fits(const char *what, int device, int64_t needed, int64_t free_bytes);

#endif
