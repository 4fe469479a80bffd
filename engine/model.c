/* Loading a checkpoint into a cinfer_model: open and validate the folder, pick the architecture,
 * bind and check every weight. On the CPU nothing is copied: weights stay in the mapped files
 * (a tensor a file stores misaligned is the rare exception, copied once); on CUDA they are
 * uploaded through a bounded staging buffer. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../models/model.h"
#include "../kernels/backend.h"
#include "../kernels/device.h"
#include "../common/error.h"
#include "model_shard.h"
#include "tp_link.h"
#include "tp_ranks.h"

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
    if (o->tensor_parallel > 1 && o->backend == CINFER_BACKEND_CUDA && !o->tp_address)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "load options: tensor_parallel = %d on CUDA runs one process per GPU: "
                       "tp_address must say where they join (the cinfer program's --tp starts "
                       "them; docs/TENSOR_PARALLEL.md)",
                       o->tensor_parallel);
    if (o->tensor_parallel > 1 && o->backend == CINFER_BACKEND_CUDA && !ci_comm_nccl_compiled())
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "load options: tensor_parallel = %d on CUDA needs NCCL, which this build "
                       "lacks (CMake found no nccl.h and libnccl: CINFER_NCCL, NCCL_HOME)",
                       o->tensor_parallel);
    if (o->tp_timeout_seconds < 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "load options: tp_timeout_seconds = %g is negative",
                       o->tp_timeout_seconds);
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

/* Rank 0's model of a sharded load becomes the whole model's face: info describes the whole
 * checkpoint, with the KV cache of every rank (the followers' replied, or summed here). */
static void become_whole(cinfer_model *m, int tp, ci_tp_ranks *followers,
                         int64_t followers_kv_bytes_per_token) {
    const ci_config *whole = &m->checkpoint->config;
    m->tp = tp;
    m->followers = followers;
    m->info.n_heads = whole->n_heads;
    m->info.n_kv_heads = whole->n_kv_heads;
    m->info.intermediate_size = whole->intermediate_size;
    m->info.kv_bytes_per_token += followers_kv_bytes_per_token;
}

/* tp ranks of the checkpoint in dir as threads of this process: one CPU communicator group, each
 * rank's model loaded with its share of the CPU threads; rank 0's model holds the others through
 * its followers. No collective runs during a load, so the ranks load one after the other; the
 * first refusal (tp does not divide the heads...) is rank 0's, with its numbers. With a seed, dir
 * is a config.json and each rank draws its part of the random weights of that seed. */
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
    int64_t followers_kv = 0;
    for (int r = 1; status == CINFER_OK && r < tp; r++)
        followers_kv += ranks[r]->info.kv_bytes_per_token;
    cinfer_model *leader = ranks ? ranks[0] : NULL;
    ci_tp_ranks *followers = NULL;
    if (status == CINFER_OK)
        status = ci_tp_ranks_threads(tp, ranks, comms, group, &followers);
    else
        ci_tp_threads_free(tp, ranks, comms, group);
    /* from here the followers hold the ranks, the communicators and the group */
    if (status != CINFER_OK) {
        cinfer_model_free(leader);
        return status;
    }
    become_whole(leader, tp, followers, followers_kv);
    *out = leader;
    return CINFER_OK;
}

/* ---- ranks as processes --------------------------------------------------------------------
 * Rank 0 listens at tp_address; each worker joins (cinfer_tp_worker_run), takes rank 0's hello
 * (the backend and kinds it runs, and on CUDA the NCCL group's id), makes its communicator, loads
 * its shard and replies with its status and KV bytes per token; then it follows rank 0's calls
 * (tp_ranks.h). Rank 0 loads its own shard meanwhile and collects the replies. */

/* How long a load may take, per rank: a 70B shard from a cold disk takes minutes. A worker that
 * dies is noticed at once (its connection closes); this bounds one that hangs. */
#define TP_LOAD_TIMEOUT_SECONDS 3600.0

typedef struct tp_hello {
    uint32_t magic; /* TP_HELLO_MAGIC: the same build's idea of this struct */
    int32_t backend, dtype, attention;
    ci_comm_id nccl_id; /* CUDA: the group's */
} tp_hello;
#define TP_HELLO_MAGIC 0x63694870u

/* How long a rank waits for the others, to join and in a collective: one knob, as PyTorch's
 * process groups have. */
static double tp_timeout(const cinfer_load_options *o) {
    return o->tp_timeout_seconds > 0 ? o->tp_timeout_seconds : CI_COMM_DEFAULT_TIMEOUT_SECONDS;
}

/* The communicator of a process rank: NCCL's on CUDA, else one over rank 0's sockets. */
static cinfer_status process_comm(ci_tp_link *link, const tp_hello *hello, int device,
                                  ci_comm **comm) {
    if (hello->backend == CINFER_BACKEND_CUDA)
        return ci_comm_nccl_create(&hello->nccl_id, ci_tp_link_rank(link), ci_tp_link_size(link),
                                   device, comm);
    return ci_tp_link_comm(link, comm);
}

static cinfer_status load_tensor_parallel_processes(const char *dir,
                                                    const cinfer_load_options *options,
                                                    cinfer_model **out) {
    const int tp = options->tensor_parallel;
    ci_tp_link *link = NULL;
    CI_TRY(ci_tp_link_listen(options->tp_address, tp, tp_timeout(options), &link));
    if (options->tp_listening)
        options->tp_listening(ci_tp_link_address(link), options->tp_listening_user);
    tp_hello hello = {TP_HELLO_MAGIC, (int32_t)options->backend, (int32_t)options->dtype,
                      (int32_t)options->attention, {{0}}};
    cinfer_status status = CINFER_OK;
    if (options->backend == CINFER_BACKEND_CUDA) status = ci_comm_nccl_unique_id(&hello.nccl_id);
    if (status == CINFER_OK) status = ci_tp_link_accept(link, &hello, sizeof hello);
    ci_comm *comm = NULL;
    if (status == CINFER_OK) status = process_comm(link, &hello, options->device, &comm);
    cinfer_model *m = NULL;
    if (status == CINFER_OK) status = ci_model_load_shard(dir, options, comm, &m);
    /* every worker's reply, even after a failure here: theirs may say more */
    int64_t followers_kv = 0;
    for (int r = 1; status == CINFER_OK && r < tp; r++) {
        const void *data = NULL;
        size_t bytes = 0;
        ci_tp_reply reply;
        status = ci_tp_link_recv(link, r, &data, &bytes, TP_LOAD_TIMEOUT_SECONDS);
        if (status == CINFER_OK && bytes != sizeof reply)
            status = CI_FAIL(CINFER_ERR_COMM, "tensor-parallel rank %d replied %zu bytes, expected "
                             "%zu", r, bytes, sizeof reply);
        if (status != CINFER_OK) break;
        memcpy(&reply, data, sizeof reply);
        reply.message[sizeof reply.message - 1] = '\0';
        if (reply.status != CINFER_OK)
            status = CI_FAIL((cinfer_status)reply.status, "tensor-parallel rank %d: %s", r,
                             reply.message);
        followers_kv += reply.value;
    }
    if (status != CINFER_OK) {
        /* the workers see the connection close and end */
        char message[1024];
        snprintf(message, sizeof message, "%s", cinfer_last_error());
        cinfer_model_free(m);
        ci_tp_link_free(link);
        ci_comm_destroy(comm);
        return CI_FAIL(status, "%s", message);
    }
    ci_tp_ranks *followers = NULL;
    status = ci_tp_ranks_processes(link, comm, 0.0, &followers);
    if (status != CINFER_OK) {
        cinfer_model_free(m);
        return status;
    }
    become_whole(m, tp, followers, followers_kv);
    *out = m;
    return CINFER_OK;
}

static cinfer_status check_worker(const char *dir, const cinfer_load_options *o, int rank) {
    if (!dir) return CI_FAIL(CINFER_ERR_ARGUMENT, "no model folder given");
    if (!o || !o->tp_address || o->tensor_parallel < 2)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "a tensor-parallel worker needs tensor_parallel >= 2 and the tp_address of "
                       "its rank 0");
    if (rank < 1 || rank >= o->tensor_parallel)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "a tensor-parallel worker's rank %d is outside 1 .. %d (tensor_parallel = "
                       "%d; rank 0 is the process that listens)",
                       rank, o->tensor_parallel - 1, o->tensor_parallel);
    return CINFER_OK;
}

cinfer_status cinfer_tp_worker_run(const char *dir, const cinfer_load_options *options, int rank) {
    ci_error_clear();
    CI_TRY(check_worker(dir, options, rank));
    ci_tp_link *link = NULL;
    void *hello_data = NULL;
    size_t hello_bytes = 0;
    CI_TRY(ci_tp_link_join(options->tp_address, rank, options->tensor_parallel,
                           tp_timeout(options), &link, &hello_data, &hello_bytes));
    tp_hello hello = {0};
    cinfer_status status = CINFER_OK;
    if (hello_bytes != sizeof hello ||
        ((const tp_hello *)hello_data)->magic != TP_HELLO_MAGIC)
        status = CI_FAIL(CINFER_ERR_COMM,
                         "rank 0 at %s is not this build of cinfer (its hello is %zu bytes, "
                         "expected %zu)",
                         options->tp_address, hello_bytes, sizeof hello);
    else
        memcpy(&hello, hello_data, sizeof hello);
    free(hello_data);
    /* rank 0's kinds, this process's threads and device */
    cinfer_load_options mine = *options;
    mine.backend = (cinfer_backend)hello.backend;
    mine.dtype = (cinfer_dtype)hello.dtype;
    mine.attention = (cinfer_attention)hello.attention;
    ci_comm *comm = NULL;
    if (status == CINFER_OK) status = process_comm(link, &hello, mine.device, &comm);
    cinfer_model *m = NULL;
    if (status == CINFER_OK) status = ci_model_load_shard(dir, &mine, comm, &m);
    ci_tp_reply reply = {.status = status, .value = m ? m->info.kv_bytes_per_token : 0};
    if (status != CINFER_OK) snprintf(reply.message, sizeof reply.message, "%s", cinfer_last_error());
    const cinfer_status sent = ci_tp_link_send(link, &reply, sizeof reply);
    if (status == CINFER_OK) status = sent;
    if (status == CINFER_OK) status = ci_tp_follow(link, m);
    char message[1024];
    snprintf(message, sizeof message, "%s", cinfer_last_error());
    cinfer_model_free(m);
    ci_tp_link_free(link);
    ci_comm_destroy(comm);
    if (status != CINFER_OK) return CI_FAIL(status, "%s", message);
    return CINFER_OK;
}

cinfer_status cinfer_model_load(const char *dir, const cinfer_load_options *options,
                                cinfer_model **out) {
    *out = NULL;
    ci_error_clear();
    if (!dir) return CI_FAIL(CINFER_ERR_ARGUMENT, "no model folder given");
    if (options) CI_TRY(check_options(options));
    if (options && options->tensor_parallel > 1)
        return options->tp_address ? load_tensor_parallel_processes(dir, options, out)
                                   : load_tensor_parallel(dir, options, NULL, out);
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
    if (options && options->tensor_parallel > 1 && options->tp_address)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: random weights run their tensor-parallel ranks as threads of this "
                       "process only (tp_address is for checkpoints)",
                       config_path);
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
    ci_tp_ranks *followers = m->followers;
    ci_free_device_weights(m);
    for (int i = 0; i < m->n_aligned_copies; i++) free(m->aligned_copies[i]);
    free(m->aligned_copies);
    free(m->bound);
    free(m->layers);
    checkpoint_close(m->checkpoint);
    free(m);
    /* rank 0's: the followers own the communicators, which its forward pass used until now */
    ci_tp_ranks_free(followers);
}

const cinfer_model_info *cinfer_model_get_info(const cinfer_model *m) { return &m->info; }
