/* Builds without CUDA (-DCINFER_CUDA=OFF, or no nvcc): there are no devices, and asking for the
 * CUDA backend says how to get one. */
#include "device.h"
#include "../common/error.h"

int ci_cuda_devices(cinfer_device_info *devices, int max) {
    (void)devices;
    (void)max;
    return 0;
}

int ci_cuda_compiled(void) { return 0; }

int ci_cuda_attention_supports(cinfer_attention kind, int head_dim, int differential,
                               ci_dtype cache_dtype, int device) {
    (void)kind;
    (void)head_dim;
    (void)differential;
    (void)cache_dtype;
    (void)device;
    return 0;
}

static cinfer_status not_built(void) {
    return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                   "this build of cinfer has no CUDA backend (it was configured with "
                   "CINFER_CUDA=OFF or without nvcc); rebuild with the CUDA toolkit installed");
}

cinfer_status ci_cuda_available(int device) {
    (void)device;
    return not_built();
}

cinfer_status ci_cuda_backend_create(int device, struct ci_backend **out) {
    (void)device;
    *out = NULL;
    return not_built();
}

cinfer_status ci_cuda_upload_weights(int device, ci_dtype matrix_dtype, const char *what,
                                     ci_weight_upload *list, int n, void **block, size_t *bytes) {
    (void)device, (void)matrix_dtype, (void)what, (void)list, (void)n;
    *block = NULL;
    *bytes = 0;
    return not_built();
}

void ci_cuda_free_weights(void *block) { (void)block; }

cinfer_status ci_cuda_memory(int device, size_t *free_bytes, size_t *total_bytes) {
    (void)device;
    *free_bytes = *total_bytes = 0;
    return not_built();
}
