/* Loading a checkpoint into a cinfer_model: open and validate the folder, pick the architecture,
 * bind and check every weight. On the CPU nothing is copied: weights stay in the mapped files
 * (a tensor a file stores misaligned is the rare exception, copied once); on CUDA they are
 * uploaded through a bounded staging buffer. */
#include <omp.h>
#include <stdlib.h>

#include "../models/model.h"
#include "../kernels/backend.h"
#include "../kernels/device.h"
#include "../common/error.h"
#include "model_shard.h"

static void fill_info(cinfer_model *m) {
    const ci_config *c = m->config;
    cinfer_model_info *info = &m->info;
    info->architecture = c->architecture;
    info->vocab_size = c->vocab_size;
    info->hidden_size = c->hidden_size;
    info->intermediate_size = c->intermediate_size;
    info->n_layers = c->n_layers;
    info->n_heads = c->n_heads;
    info->n_kv_heads = c->n_kv_heads;
    info->head_dim = c->head_dim;
    info->max_position_embeddings = c->max_position_embeddings;
    info->bos_token_id = c->bos_token_id;
    info->n_eos = c->n_eos;
    info->eos_token_ids = c->eos_token_ids;
    /* every tensor of the checkpoint counts, whether bound or not: it is what the files hold */
    for (int i = 0; i < m->checkpoint->n_index; i++) {
        const st_tensor *t = m->checkpoint->index[i];
        info->n_params += st_tensor_numel(t);
        info->weight_bytes += (int64_t)(t->end - t->begin);
    }
    /* K and V, every layer, in the cache dtype */
    const ci_tensor kv_row = {
        NULL, ci_kv_cache_dtype(&m->options), 1, {c->n_kv_heads * c->head_dim}};
    info->kv_bytes_per_token = 2 * (int64_t)c->n_layers * (int64_t)ci_tensor_nbytes(&kv_row);
    info->attention = m->options.backend == CINFER_BACKEND_CUDA
                          ? cinfer_attention_name(m->options.attention)
                          : "reference";
    info->tensor_parallel = m->comm ? m->comm->size : 1;
}

/* More ranks than this are surely a mistake (a rank is a thread here, a GPU later). */
enum { CI_MAX_TENSOR_PARALLEL = 256 };

static cinfer_status check_options(const cinfer_load_options *o) {
    if (o->dtype != CINFER_DTYPE_F32 && o->dtype != CINFER_DTYPE_BF16 &&
        o->dtype != CINFER_DTYPE_F16)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "load options: dtype %d is not f32, bf16 or fp16",
                       (int)o->dtype);
    if (o->attention < CINFER_ATTENTION_AUTO || o->attention > CINFER_ATTENTION_FLASH)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "load options: attention %d is not auto, eager, sdpa or flash",
                       (int)o->attention);
    if (o->backend == CINFER_BACKEND_CPU && o->attention != CINFER_ATTENTION_AUTO)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "load options: attention '%s' selects among the CUDA backend's kinds; the "
                       "CPU reference path computes attention one way (leave it auto)",
                       cinfer_attention_name(o->attention));
    if (o->backend == CINFER_BACKEND_CPU && o->dtype != CINFER_DTYPE_F32)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "load options: the CPU reference backend computes in f32 only; dtype %s "
                       "needs the CUDA backend",
                       cinfer_dtype_name(o->dtype));
    if (o->device < 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "load options: device index %d is negative", o->device);
    if (o->tensor_parallel < 0 || o->tensor_parallel > CI_MAX_TENSOR_PARALLEL)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "load options: tensor_parallel = %d: expected 1 (or 0: unsharded) to %d ranks",
                       o->tensor_parallel, CI_MAX_TENSOR_PARALLEL);
    if (o->tensor_parallel > 1 && o->backend == CINFER_BACKEND_CUDA)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "load options: tensor_parallel = %d on CUDA needs one process per GPU with "
                       "NCCL between them, which is not built yet (docs/TENSOR_PARALLEL.md); the "
                       "CPU backend runs the ranks as threads",
                       o->tensor_parallel);
    if (o->backend == CINFER_BACKEND_CUDA) return ci_cuda_available(o->device);
    return ci_backend_available(o->backend);
}

/* On CUDA, auto becomes the fastest kind that runs the model, and a kind asked for by name must
 * run it: refused here, before any weight is uploaded, rather than mid-forward. */
static cinfer_status resolve_attention(cinfer_model *m) {
    cinfer_load_options *o = &m->options;
    const int head_dim = m->config->head_dim;
    const int differential = m->arch->differential;
    const ci_dtype kv_dtype = ci_kv_cache_dtype(o);
    if (o->backend != CINFER_BACKEND_CUDA) return CINFER_OK;
    if (o->attention == CINFER_ATTENTION_AUTO) {
        static const cinfer_attention fastest_first[] = {CINFER_ATTENTION_FLASH,
                                                         CINFER_ATTENTION_SDPA};
        o->attention = CINFER_ATTENTION_EAGER; /* cuBLAS runs any head_dim */
        for (int i = 0; i < 2; i++)
            if (ci_cuda_attention_supports(fastest_first[i], head_dim, differential, kv_dtype,
                                           o->device)) {
                o->attention = fastest_first[i];
                break;
            }
        return CINFER_OK;
    }
    if (!ci_cuda_attention_supports(o->attention, head_dim, differential, kv_dtype, o->device))
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: attention '%s' cannot run head_dim %d%s on CUDA device %d (eager runs "
                       "any head_dim; sdpa up to 256; flash up to 128, and its differential "
                       "kernel at 128 needs 103 KiB of shared memory per block)",
                       m->checkpoint->config_path, cinfer_attention_name(o->attention), head_dim,
                       differential ? " (differential)" : "", o->device);
    return CINFER_OK;
}

/* The part of the checkpoint a model holds (models/shard.h): all of it without a communicator;
 * else its rank's, whose config becomes the model's. */
static cinfer_status plan_shard(cinfer_model *m, ci_comm *comm) {
    const ci_config *whole = &m->checkpoint->config;
    const int rank = comm ? comm->rank : 0, tp = comm ? comm->size : 1;
    /* the host draws any part of a tensor; the device draw (kernels/cuda/random_fill.cuh) fills
     * whole tensors only */
    if (comm && m->checkpoint->synthetic && m->options.backend == CINFER_BACKEND_CUDA)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: random weights are drawn on the GPU whole; a tensor-parallel rank's "
                       "part of them (tp = %d) is drawn on the CPU backend only",
                       m->checkpoint->config_path, tp);
    cinfer_status status = ci_shard_plan_make(whole, m->arch->differential, rank, tp, &m->shard);
    if (status != CINFER_OK) {
        ci_error_prefix("%s: ", m->checkpoint->config_path);
        return status;
    }
    if (comm) {
        m->comm = comm;
        m->config = &m->shard.local;
    }
    return CINFER_OK;
}

/* Binds the checkpoint's weights (a rank's part of them with a communicator) into a model and, for
 * a GPU, uploads them. Takes ownership of the checkpoint. */
static cinfer_status load_from(ci_checkpoint *checkpoint, const cinfer_load_options *options,
                               ci_comm *comm, cinfer_model **out) {
    cinfer_model *m = calloc(1, sizeof *m);
    if (!m) checkpoint_close(checkpoint);
    CI_CHECK_ALLOC(m, sizeof *m);
    if (options) m->options = *options;
    m->checkpoint = checkpoint;
    m->config = &m->checkpoint->config;
    cinfer_status status =
        ci_architecture_configure(checkpoint->config_path, &checkpoint->config, &m->arch);
    if (status == CINFER_OK) status = plan_shard(m, comm);
    if (status == CINFER_OK) status = ci_bind_model_weights(m);
    if (status == CINFER_OK) status = resolve_attention(m);
    /* every check on the files has passed: only now is device memory worth asking for */
    if (status == CINFER_OK && m->options.backend == CINFER_BACKEND_CUDA)
        status = ci_upload_weights(m);
    if (status != CINFER_OK) {
        cinfer_model_free(m);
        return status;
    }
    fill_info(m);
    *out = m;
    return CINFER_OK;
}

/* Frees what load_tensor_parallel built around rank 0's model: the other ranks' models, then the
 * communicators they were bound to, then their group. */
static void free_ranks(int tp, cinfer_model **ranks, ci_comm **comms, ci_comm_group *group) {
    for (int r = 1; ranks && r < tp; r++) cinfer_model_free(ranks[r]);
    for (int r = 0; comms && r < tp; r++) ci_comm_destroy(comms[r]);
    ci_comm_group_free(group);
    free(ranks);
    free(comms);
}

/* tp ranks of the checkpoint in dir as threads of this process: one CPU communicator group, each
 * rank's model loaded with its share of the CPU threads; rank 0's model holds them all. No
 * collective runs during a load, so the ranks load one after the other; the first refusal (tp
 * does not divide the heads...) is rank 0's, with its numbers. With a seed, dir is a config.json
 * and each rank draws its part of the random weights of that seed. */
static cinfer_status load_tensor_parallel(const char *dir, const cinfer_load_options *options,
                                          const uint64_t *seed, cinfer_model **out) {
    const int tp = options->tensor_parallel;
    cinfer_load_options rank_options = *options;
    const int threads = options->n_threads > 0 ? options->n_threads : omp_get_max_threads();
    rank_options.n_threads = threads / tp > 0 ? threads / tp : 1;
    ci_comm_group *group = NULL;
    CI_TRY(ci_comm_group_create(tp, 0.0, &group));
    cinfer_model **ranks = calloc((size_t)tp, sizeof *ranks);
    ci_comm **comms = calloc((size_t)tp, sizeof *comms);
    cinfer_status status = ranks && comms ? CINFER_OK : CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    for (int r = 0; status == CINFER_OK && r < tp; r++) {
        status = ci_comm_cpu_create(group, r, &comms[r]);
        if (status == CINFER_OK)
            status =
                seed ? ci_model_load_random_shard(dir, &rank_options, *seed, comms[r], &ranks[r])
                     : ci_model_load_shard(dir, &rank_options, comms[r], &ranks[r]);
    }
    if (status != CINFER_OK) {
        if (ranks) cinfer_model_free(ranks[0]);
        free_ranks(tp, ranks, comms, group);
        return status;
    }
    cinfer_model *m = ranks[0];
    pthread_mutex_init(&m->step_lock, NULL);
    m->tp = tp;
    m->ranks = ranks;
    m->comms = comms;
    m->group = group;
    /* the whole model's shape; the KV cache of every rank */
    const ci_config *whole = &m->checkpoint->config;
    int64_t kv_bytes_per_token = 0;
    for (int r = 0; r < tp; r++) kv_bytes_per_token += ranks[r]->info.kv_bytes_per_token;
    m->info.n_heads = whole->n_heads;
    m->info.n_kv_heads = whole->n_kv_heads;
    m->info.intermediate_size = whole->intermediate_size;
    m->info.kv_bytes_per_token = kv_bytes_per_token;
    *out = m;
    return CINFER_OK;
}

cinfer_status cinfer_model_load(const char *dir, const cinfer_load_options *options,
                                cinfer_model **out) {
    *out = NULL;
    ci_error_clear();
    if (!dir) return CI_FAIL(CINFER_ERR_ARGUMENT, "no model folder given");
    if (options) CI_TRY(check_options(options));
    if (options && options->tensor_parallel > 1)
        return load_tensor_parallel(dir, options, NULL, out);
    ci_checkpoint *checkpoint;
    CI_TRY(checkpoint_open(dir, &checkpoint));
    return load_from(checkpoint, options, NULL, out);
}

cinfer_status ci_model_load_shard(const char *dir, const cinfer_load_options *options,
                                  ci_comm *comm, cinfer_model **out) {
    *out = NULL;
    ci_error_clear();
    if (!dir) return CI_FAIL(CINFER_ERR_ARGUMENT, "no model folder given");
    if (!comm) return CI_FAIL(CINFER_ERR_ARGUMENT, "a tensor-parallel rank needs its communicator");
    if (options) CI_TRY(check_options(options));
    ci_checkpoint *checkpoint;
    CI_TRY(checkpoint_open(dir, &checkpoint));
    return load_from(checkpoint, options, comm, out);
}

cinfer_status cinfer_model_load_random(const char *config_path, const cinfer_load_options *options,
                                       uint64_t seed, cinfer_model **out) {
    *out = NULL;
    ci_error_clear();
    if (!config_path) return CI_FAIL(CINFER_ERR_ARGUMENT, "no config.json given");
    if (options) CI_TRY(check_options(options));
    if (options && options->tensor_parallel > 1)
        return load_tensor_parallel(config_path, options, &seed, out);
    ci_checkpoint *checkpoint;
    CI_TRY(checkpoint_synthetic(config_path, seed, &checkpoint));
    return load_from(checkpoint, options, NULL, out);
}

cinfer_status ci_model_load_random_shard(const char *config_path,
                                         const cinfer_load_options *options, uint64_t seed,
                                         ci_comm *comm, cinfer_model **out) {
    *out = NULL;
    ci_error_clear();
    if (!config_path) return CI_FAIL(CINFER_ERR_ARGUMENT, "no config.json given");
    if (!comm) return CI_FAIL(CINFER_ERR_ARGUMENT, "a tensor-parallel rank needs its communicator");
    if (options) CI_TRY(check_options(options));
    ci_checkpoint *checkpoint;
    CI_TRY(checkpoint_synthetic(config_path, seed, &checkpoint));
    return load_from(checkpoint, options, comm, out);
}

void cinfer_model_free(cinfer_model *m) {
    if (!m) return;
    /* rank 0 of an in-process group: the other ranks first, the communicators after every model */
    cinfer_model **ranks = m->ranks;
    ci_comm **comms = m->comms;
    ci_comm_group *group = m->group;
    const int tp = m->tp;
    for (int r = 1; ranks && r < tp; r++) cinfer_model_free(ranks[r]);
    if (ranks) ranks[0] = NULL;
    ci_free_device_weights(m);
    for (int i = 0; i < m->n_aligned_copies; i++) free(m->aligned_copies[i]);
    free(m->aligned_copies);
    free(m->bound);
    free(m->layers);
    checkpoint_close(m->checkpoint);
    if (ranks) pthread_mutex_destroy(&m->step_lock);
    free(m);
    if (ranks) {
        for (int r = 1; r < tp; r++) ranks[r] = NULL; /* freed above */
        free_ranks(tp, ranks, comms, group);
    }
}

const cinfer_model_info *cinfer_model_get_info(const cinfer_model *m) { return &m->info; }
