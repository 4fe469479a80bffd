#include "backend.h"

#include <stdlib.h>

#include "cpu/ops_cpu.h"
#include "device.h"
#include "../common/error.h"

cinfer_status ci_backend_available(cinfer_backend kind) {
    switch (kind) {
    case CINFER_BACKEND_CPU: return CINFER_OK;
    case CINFER_BACKEND_CUDA: return ci_cuda_available(0);
    }
    return CI_FAIL(CINFER_ERR_ARGUMENT, "unknown backend %d (expected cpu or cuda)", (int)kind);
}

ci_dtype ci_kv_cache_dtype(const cinfer_load_options *options) {
    return options->backend == CINFER_BACKEND_CUDA ? ci_dtype_of_run(options->dtype) : CI_F32;
}

cinfer_status ci_backend_create(cinfer_backend kind, int n_threads, ci_backend **out) {
    const cinfer_load_options options = {.backend = kind, .n_threads = n_threads};
    return ci_backend_create_for(&options, out);
}

cinfer_status ci_backend_create_for(const cinfer_load_options *options, ci_backend **out) {
    *out = NULL;
    CI_TRY(ci_backend_available(options->backend));
    CI_TRY(options->backend == CINFER_BACKEND_CUDA
               ? ci_cuda_backend_create(options->device, out)
               : ci_cpu_backend_create(options->n_threads, out));
    (*out)->attention =
        options->attention == CINFER_ATTENTION_AUTO ? CINFER_ATTENTION_EAGER : options->attention;
    return CINFER_OK;
}

void ci_backend_free(ci_backend *be) {
    if (!be) return;
    if (be->workspace) be->ops->free(be, be->workspace);
    if (be->ops->release) be->ops->release(be);
    free(be);
}

cinfer_status ci_backend_reserve(ci_backend *be, size_t bytes) {
    if (bytes <= be->workspace_bytes) return CINFER_OK;
    void *grown = be->ops->alloc(be, bytes);
    if (!grown)
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory reserving %zu bytes of %s workspace",
                       bytes, be->ops->name);
    if (be->workspace) be->ops->free(be, be->workspace);
    be->workspace = grown;
    be->workspace_bytes = bytes;
    return CINFER_OK;
}

cinfer_status ci_memory_fits(const char *what, int device, int64_t needed, int64_t free_bytes) {
    if (needed <= free_bytes) return CINFER_OK;
    const double mib = 1024.0 * 1024.0;
    return CI_FAIL(CINFER_ERR_MEMORY,
                   "%s need %.1f MiB (%lld bytes) on CUDA device %d, "
                   "which has %.1f MiB (%lld bytes) free",
                   what, (double)needed / mib, (long long)needed, device, (double)free_bytes / mib,
                   (long long)free_bytes);
}

void ci_backend_run_step(ci_backend *be, ci_recorded_step *recorded, int record, int pos0,
                         void (*step)(void *user, int pos0), void *user) {
    const ci_backend_ops *ops = be->ops;
    if (!record || !ops->capture_begin || recorded->state < 0) {
        step(user, pos0);
        return;
    }
    ops->set_position(be, pos0);
    if (recorded->state == 0) {
        /* A rehearsal first, which does the one-time work (kernel loading, cuBLAS's choices) that
         * must not happen while recording, then the recording. The rehearsal runs the step for
         * real and the replay below runs it again: harmless, since a step rewrites the same cache
         * rows with the same values and computes the same outputs. */
        int unused;
        ops->capture_begin(be, 0);
        step(user, pos0);
        ops->capture_end(be, &unused);
        ops->capture_begin(be, 1);
        step(user, pos0);
        recorded->state = ops->capture_end(be, &recorded->id) == 0 ? 1 : -1;
    }
    if (recorded->state == 1)
        ops->replay(be, recorded->id);
    else
        step(user, pos0);
}
