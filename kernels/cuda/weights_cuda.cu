// Uploading a model's weights to the device, converted to the run dtype there.
//
// The weights are memory-mapped views into the checkpoint's shards (models/weights.c). They go up
// in file order (sorted by address: shard after shard, front to back in each), a chunk at a time
// through one pinned host buffer and one device buffer of STAGING_BYTES each, and a kernel widens
// or rounds each chunk into its place in one device allocation. Host memory stays bounded by the
// staging buffer whatever the model's size; a bf16 checkpoint is never copied whole on the host.
//
// Matrices become the run dtype; vectors (norm weights, biases) become F32 (engine/backend.h).
//
// A random model (cinfer_model_load_random) has no files: its tensors are drawn straight into
// their place in the same allocation (random_fill.cuh), and nothing is staged. The host holds
// only the model's list of pending draws (models/model.h, ci_device_draw).
#include <stdlib.h>
#include <string.h>

#include "ops_cuda.h"
#include "random_fill.cuh"

extern "C" {
#include "../device.h"
#include "../../models/model.h"
}

static const size_t STAGING_BYTES = 64u << 20;
// Each tensor starts on a 256-byte boundary, what cudaMalloc gives and what vector loads like.
static const size_t TENSOR_ALIGNMENT = 256;

// Every tensor the model holds, once (lm_head is left out when it is the embedding itself).
static int list_weights(cinfer_model *m, ci_tensor **list) {
    int n = 0;
    list[n++] = &m->embed_tokens;
    list[n++] = &m->norm;
    if (!m->config->tie_word_embeddings) list[n++] = &m->lm_head;
    for (int l = 0; l < m->config->n_layers; l++) {
        ci_layer *w = &m->layers[l];
        ci_tensor *layer[] = {&w->input_layernorm, &w->q_proj,
                              &w->k_proj,          &w->v_proj,
                              &w->q_bias,          &w->k_bias,
                              &w->v_bias,          &w->o_proj,
                              &w->o_bias,          &w->post_attention_layernorm,
                              &w->gate_proj,       &w->up_proj,
                              &w->gate_bias,       &w->up_bias,
                              &w->down_proj,       &w->down_bias};
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++)
            if (layer[i]->data) list[n++] = layer[i];
    }
    return n;
}

static int by_host_address(const void *a, const void *b) {
    const uintptr_t x = (uintptr_t)(*(ci_tensor *const *)a)->data;
    const uintptr_t y = (uintptr_t)(*(ci_tensor *const *)b)->data;
    return x < y ? -1 : x > y;
}

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

// The pending draw of a random model's tensor t: where its data points until the upload.
static const ci_device_draw *pending_draw(const cinfer_model *m, const ci_tensor *t) {
    const ci_device_draw *d = (const ci_device_draw *)t->data;
    CI_ASSERT(m->device_draws && d >= m->device_draws && d < m->device_draws + m->n_device_draws);
    CI_ASSERT(d->tensor == t);
    return d;
}

extern "C" cinfer_status ci_cuda_upload_weights(cinfer_model *m) {
    const int device = m->options.device;
    const ci_dtype run = ci_dtype_of_run(m->options.dtype);
    const int max_tensors = 3 + m->config->n_layers * CI_LAYER_MAX_TENSORS;
    ci_tensor **list = (ci_tensor **)malloc((size_t)max_tensors * sizeof *list);
    CI_CHECK_ALLOC(list, (size_t)max_tensors * sizeof *list);
    const int n = list_weights(m, list);
    qsort(list, (size_t)n, sizeof *list, by_host_address);

    // a random model draws its tensors in place: no staging buffers
    const bool drawn = m->device_draws != NULL;
    const size_t staging_bytes = drawn ? 0 : STAGING_BYTES;
    CI_ASSERT(!drawn || n == m->n_device_draws); // every device tensor is drawn, none twice
    size_t needed = 0;
    for (int i = 0; i < n; i++)
        needed +=
            align_up((size_t)ci_tensor_numel(list[i]) * ci_dtype_size(device_dtype(list[i], run)));
    size_t free_bytes = 0, total_bytes = 0;
    cinfer_status status = ci_cuda_memory(device, &free_bytes, &total_bytes);
    if (status == CINFER_OK) {
        char what[160];
        if (drawn)
            snprintf(what, sizeof what, "random weights of the shape of %s in %s",
                     ci_base_name(m->checkpoint->dir), cinfer_dtype_name(m->options.dtype));
        else
            snprintf(what, sizeof what, "the weights of %s in %s (plus %zu MiB of upload staging)",
                     ci_base_name(m->checkpoint->dir), cinfer_dtype_name(m->options.dtype),
                     STAGING_BYTES >> 20);
        status =
            ci_memory_fits(what, device, (int64_t)(needed + staging_bytes), (int64_t)free_bytes);
    }
    if (status != CINFER_OK) {
        free(list);
        return status;
    }

    void *weights = NULL, *staging = NULL, *pinned = NULL;
    cudaStream_t stream = NULL;
    cudaError_t error = cudaMalloc(&weights, needed ? needed : 1);
    if (error == cudaSuccess && !drawn) error = cudaMalloc(&staging, STAGING_BYTES);
    if (error == cudaSuccess && !drawn) error = cudaMallocHost(&pinned, STAGING_BYTES);
    if (error == cudaSuccess) error = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    size_t offset = 0;
    for (int i = 0; error == cudaSuccess && i < n; i++) {
        ci_tensor *t = list[i];
        const ci_dtype dtype = device_dtype(t, run);
        void *dst = (char *)weights + offset;
        if (drawn) {
            // what convert_cuda would make of the host draw, drawn in place
            const int filled = random_fill(dst, dtype, t->dtype, pending_draw(m, t)->draw,
                                           ci_tensor_numel(t), stream);
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
    free(list);
    if (m->config->tie_word_embeddings) m->lm_head = m->embed_tokens;
    m->device_weights = weights;
    m->device_weight_bytes = needed;
    if (error != cudaSuccess) {
        cudaGetLastError();
        return CI_FAIL(CINFER_ERR_MEMORY, "%s: uploading the weights to CUDA device %d failed: %s",
                       m->checkpoint->dir, device, cudaGetErrorString(error));
    }
    return CINFER_OK;
}

extern "C" void ci_cuda_free_weights(cinfer_model *m) {
    if (!m->device_weights) return;
    CUDA_CHECK(cudaFree(m->device_weights));
    m->device_weights = NULL;
    m->device_weight_bytes = 0;
}
