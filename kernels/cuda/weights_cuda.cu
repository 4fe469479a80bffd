// Uploading a model's weights to the device, converted to the run dtype there.
//
// The weights are memory-mapped views into the checkpoint's shards, listed by the model
// (models/weights.c: ci_upload_weights). They go up in the order given (file order: shard after
// shard, front to back in each), a chunk at a time
// through one pinned host buffer and one device buffer of STAGING_BYTES each, and a kernel widens
// or rounds each chunk into its place in one device allocation. Host memory stays bounded by the
// staging buffer whatever the model's size; a bf16 checkpoint is never copied whole on the host.
//
// Matrices become the run dtype; vectors (norm weights, biases) become F32 (kernels/backend.h).
//
// A random model (cinfer_model_load_random) has no files: its tensors are drawn straight into
// their place in the same allocation (random_fill.cuh), and nothing is staged. The host holds
// only the model's list of pending draws (models/model.h, ci_device_draw).
//
// The kernels know nothing of models: the list of tensors is all they are given.
#include <stdlib.h>
#include <string.h>

#include "ops_cuda.h"
#include "random_fill.cuh"

extern "C" {
#include "../device.h"
}

static const size_t STAGING_BYTES = 64u << 20;
// Each tensor starts on a 256-byte boundary, what cudaMalloc gives and what vector loads like.
static const size_t TENSOR_ALIGNMENT = 256;

static ci_dtype device_dtype(const ci_tensor *t, ci_dtype run) {
    return t->n_dims == 2 ? run : CI_F32;
}

static size_t align_up(size_t bytes) {
    return (bytes + TENSOR_ALIGNMENT - 1) / TENSOR_ALIGNMENT * TENSOR_ALIGNMENT;
}

// Copies one tensor's bytes up through the staging buffers, converting each chunk into dst.
static cudaError_t upload_tensor(const ci_tensor *t, void *dst, ci_dtype dst_dtype, void *pinned,
                                 void *staging, cudaStream_t stream) {
    const size_t element = ci_dtype_size(t->dtype), total = ci_tensor_nbytes(t);
    const size_t chunk_elements = STAGING_BYTES / element;
    for (size_t done = 0; done < total;) {
        const size_t bytes =
            total - done < chunk_elements * element ? total - done : chunk_elements * element;
        memcpy(pinned, (const char *)t->data + done, bytes); // reads the mapped file
        cudaError_t error = cudaMemcpyAsync(staging, pinned, bytes, cudaMemcpyHostToDevice, stream);
        if (error != cudaSuccess) return error;
        convert_cuda(stream, (char *)dst + done / element * ci_dtype_size(dst_dtype), dst_dtype,
                     staging, t->dtype, (int64_t)(bytes / element));
        error = cudaStreamSynchronize(stream); // the pinned buffer is refilled next
        if (error != cudaSuccess) return error;
        done += bytes;
    }
    return cudaSuccess;
}

extern "C" cinfer_status ci_cuda_upload_weights(int device, ci_dtype run, const char *what,
                                                ci_weight_upload *list, int n, void **block,
                                                size_t *bytes) {
    *block = NULL;
    *bytes = 0;
    // a random model draws its tensors in place: no staging buffers
    const bool drawn = n > 0 && list[0].draw != NULL;
    const size_t staging_bytes = drawn ? 0 : STAGING_BYTES;
    size_t needed = 0;
    for (int i = 0; i < n; i++) {
        CI_ASSERT((list[i].draw != NULL) == drawn); // all drawn, or all copied
        const ci_tensor *t = list[i].tensor;
        needed += align_up((size_t)ci_tensor_numel(t) * ci_dtype_size(device_dtype(t, run)));
    }
    size_t free_bytes = 0, total_bytes = 0;
    cinfer_status status = ci_cuda_memory(device, &free_bytes, &total_bytes);
    if (status == CINFER_OK) {
        char message[256];
        if (drawn)
            snprintf(message, sizeof message, "%s", what);
        else
            snprintf(message, sizeof message, "%s (plus %zu MiB of upload staging)", what,
                     STAGING_BYTES >> 20);
        status =
            ci_memory_fits(message, device, (int64_t)(needed + staging_bytes), (int64_t)free_bytes);
    }
    if (status != CINFER_OK) return status;

    void *weights = NULL, *staging = NULL, *pinned = NULL;
    cudaStream_t stream = NULL;
    cudaError_t error = cudaMalloc(&weights, needed ? needed : 1);
    if (error == cudaSuccess && !drawn) error = cudaMalloc(&staging, STAGING_BYTES);
    if (error == cudaSuccess && !drawn) error = cudaMallocHost(&pinned, STAGING_BYTES);
    if (error == cudaSuccess) error = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    size_t offset = 0;
    for (int i = 0; error == cudaSuccess && i < n; i++) {
        ci_tensor *t = list[i].tensor;
        const ci_dtype dtype = device_dtype(t, run);
        void *dst = (char *)weights + offset;
        if (drawn) {
            // what convert_cuda would make of the host draw, drawn in place
            const int filled =
                random_fill(dst, dtype, t->dtype, *list[i].draw, ci_tensor_numel(t), stream);
            CI_ASSERT(filled == 0); // weights are F32, BF16 or F16, in the files and on device
        } else {
            error = upload_tensor(t, dst, dtype, pinned, staging, stream);
        }
        offset += align_up((size_t)ci_tensor_numel(t) * ci_dtype_size(dtype));
        t->data = dst; // the model's tensor now names the device copy
        t->dtype = dtype;
    }
    if (drawn && error == cudaSuccess) error = cudaStreamSynchronize(stream);
    if (stream) cudaStreamDestroy(stream);
    if (pinned) cudaFreeHost(pinned);
    if (staging) cudaFree(staging);
    *block = weights;
    *bytes = needed;
    if (error != cudaSuccess) {
        cudaGetLastError();
        return CI_FAIL(CINFER_ERR_MEMORY, "uploading %s to CUDA device %d failed: %s", what, device,
                       cudaGetErrorString(error));
    }
    return CINFER_OK;
}

extern "C" void ci_cuda_free_weights(void *block) {
    if (block) CUDA_CHECK(cudaFree(block));
}
