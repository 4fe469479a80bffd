#include "backend.h"

#include <omp.h>
#include <stdlib.h>

#include "../kernels/cpu/ops_cpu.h"
#include "error.h"

cinfer_status ci_backend_available(cinfer_backend kind) {
    if (kind != CINFER_BACKEND_CPU)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "only the CPU backend is available in this build (the CUDA backend is "
                       "not implemented yet)");
    return CINFER_OK;
}

cinfer_status ci_backend_create(cinfer_backend kind, int n_threads, ci_backend **out) {
    *out = NULL;
    CI_TRY(ci_backend_available(kind));
    ci_backend *be = calloc(1, sizeof *be);
    CI_CHECK_ALLOC(be, sizeof *be);
    be->ops = &ci_cpu_ops;
    be->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    *out = be;
    return CINFER_OK;
}

void ci_backend_free(ci_backend *be) {
    if (!be) return;
    if (be->workspace) be->ops->free(be, be->workspace);
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
