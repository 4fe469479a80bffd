/*
 * cinfer: an inference engine for Llama-family language models.
 *
 * This is the whole public C API. Everything else in the tree is internal.
 *
 *   cinfer_model *model;
 *   if (cinfer_model_load("path/to/checkpoint", NULL, &model) != CINFER_OK) {
 *       fprintf(stderr, "%s\n", cinfer_last_error());
 *       return 1;
 *   }
 *   cinfer_session *session;
 *   cinfer_session_create(model, 0, &session);          // 0: context from the config
 *   cinfer_generate(session, prompt, n_prompt, &params, on_token, user, &result);
 *   cinfer_session_free(session);
 *   cinfer_model_free(model);
 *
 * Errors: every call that can fail returns a cinfer_status; the message (which names the file, the
 * field and what was expected) is kept per thread and read with cinfer_last_error().
 */
#ifndef CINFER_H
#define CINFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cinfer_status {
    CINFER_OK = 0,
    CINFER_ERR_IO,          /* a file is missing, unreadable, or could not be written */
    CINFER_ERR_FORMAT,      /* a file is malformed (safetensors header, JSON) */
    CINFER_ERR_CONFIG,      /* config.json is missing a field or is inconsistent */
    CINFER_ERR_WEIGHTS,     /* a tensor is missing or its shape/dtype does not match the config */
    CINFER_ERR_ARGUMENT,    /* a caller passed something out of range (token id, length, option) */
    CINFER_ERR_MEMORY,      /* an allocation failed */
    CINFER_ERR_UNSUPPORTED, /* valid input that this build cannot run (architecture, rope type...)
                             */
    CINFER_ERR_CONTEXT_FULL, /* the session's KV cache has no room for the tokens */
    CINFER_ERR_COMM /* tensor parallelism: a collective failed (a rank gave up or timed out, or the
                       ranks called different collectives); the group is unusable after it */
} cinfer_status;

/* The message of the last error on this thread ("" if none). Valid until the next failing call. */
const char *cinfer_last_error(void);
/* "file.c:123" of the code that raised the last error: for bug reports, not for users. */
const char *cinfer_last_error_location(void);

/* ---- models ---------------------------------------------------------------------------------- */

typedef struct cinfer_model cinfer_model;

typedef enum cinfer_backend { CINFER_BACKEND_CPU = 0, CINFER_BACKEND_CUDA = 1 } cinfer_backend;
#define CINFER_BACKEND_COUNT 2

/* The dtype GEMM inputs, weights and the KV cache have on the device. The residual stream, norms
 * and softmax stay F32 in every mode; the CPU reference computes in F32 only, its KV cache too. */
typedef enum cinfer_dtype {
    CINFER_DTYPE_F32 = 0, /* weights widened to F32; TF32 off, so GPU runs verify tightly */
    CINFER_DTYPE_BF16 = 1,
    CINFER_DTYPE_F16 = 2
} cinfer_dtype;
#define CINFER_DTYPE_COUNT 3

/* How the CUDA backend computes attention (the CPU reference has one way, its own). */
typedef enum cinfer_attention {
    CINFER_ATTENTION_AUTO = 0,  /* the fastest kind that runs the model in the run dtype */
    CINFER_ATTENTION_EAGER = 1, /* scores through cuBLAS into global memory, masked softmax, then
                                   P·V, as transformers' eager */
    CINFER_ATTENTION_SDPA = 2,  /* one fused SIMT kernel, no score matrix in global memory */
    CINFER_ATTENTION_FLASH = 3  /* tiled, online softmax, tensor cores in bf16/fp16; split-K
                                   flash-decoding for one new query */
} cinfer_attention;
#define CINFER_ATTENTION_COUNT 4

/* The one spelling of each value, as options and messages write it ("bf16", "flash", "cuda"), and
 * the reverse, which also takes the aliases people type: float32/fp32, bfloat16, f16/float16/half.
 * A name is "unknown" for a value out of range; from_name returns 0, or -1 for an unknown name. */
const char *cinfer_dtype_name(cinfer_dtype dtype);
int cinfer_dtype_from_name(const char *name, cinfer_dtype *out);
const char *cinfer_attention_name(cinfer_attention kind);
int cinfer_attention_from_name(const char *name, cinfer_attention *out);
const char *cinfer_backend_name(cinfer_backend backend);
int cinfer_backend_from_name(const char *name, cinfer_backend *out);

/* A zeroed struct is the CPU reference path in F32. */
typedef struct cinfer_load_options {
    cinfer_backend backend;     /* CINFER_BACKEND_CPU is the reference path */
    int n_threads;              /* CPU threads; 0 = OpenMP's default */
    cinfer_dtype dtype;         /* CUDA: run dtype of the GEMMs; the CPU takes F32 only */
    cinfer_attention attention; /* CUDA: attention kind; AUTO picks the fastest that runs */
    int device;                 /* CUDA device index */
    /* Tensor parallelism (docs/TENSOR_PARALLEL.md): the model split across this many ranks, each
     * holding its heads and slice of the MLP and lm_head; 0 or 1: unsharded. The ranks of a model
     * share one communicator group: its sessions and engines may be many, and their calls take
     * turns (a lock per model). */
    int tensor_parallel;
    /* Where ranks 1 .. tensor_parallel-1 run. NULL: threads of this process (the CPU only; they
     * share n_threads). "host:port": processes of their own (one per GPU; the CUDA backend needs
     * them, the CPU takes them too), each calling cinfer_tp_worker_run; this process is rank 0 and
     * listens there for them (port 0: any free port). On CUDA the ranks' collectives are NCCL's;
     * on the CPU they go through rank 0's sockets. Not kept after the load.
     * tp_timeout_seconds (0: 600, PyTorch's default): how long a rank waits for the others, to
     * join and in a collective, before it fails naming the ranks missing. */
    const char *tp_address;
    double tp_timeout_seconds;
    /* Called once rank 0 listens, with the address the workers must join (the port resolved):
     * where a launcher starts them. May be NULL. */
    void (*tp_listening)(const char *address, void *user);
    void *tp_listening_user;
} cinfer_load_options;

/* What a loaded model is; filled from config.json and the checkpoint. */
typedef struct cinfer_model_info {
    const char *architecture; /* "LlamaForCausalLM" or "DiffLlamaForCausalLM" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    int bos_token_id; /* -1 when the config has none */
    int n_eos;        /* eos_token_id may be a list */
    const int *eos_token_ids;
    int64_t n_params;           /* elements in all weight tensors */
    int64_t weight_bytes;       /* bytes of all weight tensors as stored */
    int64_t kv_bytes_per_token; /* KV cache bytes per token of context, all layers */
    const char *attention;      /* the kind that runs: "reference" on the CPU, else eager, sdpa or
                                   flash (auto resolved at load) */
    int tensor_parallel;        /* ranks the model runs on (1: unsharded); the fields above describe
                                   the whole model, kv_bytes_per_token summed over the ranks */
} cinfer_model_info;

/* Loads a Hugging Face checkpoint folder: config.json plus model.safetensors or
 * model.safetensors.index.json with its shards. Tensors are memory-mapped, not copied. */
cinfer_status cinfer_model_load(const char *dir, const cinfer_load_options *options,
                                cinfer_model **out);
/* A model of the shape config_path (a config.json) describes, with random weights drawn from
 * seed as transformers initializes a fresh model (in the config's torch_dtype): for benchmarks
 * of any shape without a checkpoint. The same seed gives the same weights, on every backend; on
 * CUDA they are drawn in device memory, with no host copy. */
cinfer_status cinfer_model_load_random(const char *config_path, const cinfer_load_options *options,
                                       uint64_t seed, cinfer_model **out);
void cinfer_model_free(cinfer_model *model);
/* A worker process of a tensor-parallel model (cinfer_load_options.tp_address): joins rank 0 at
 * options->tp_address as rank `rank` of options->tensor_parallel, loads its part of the checkpoint
 * in dir (on CUDA, to options->device), then runs what rank 0's sessions and engines ask of it.
 * Returns CINFER_OK once rank 0 frees its model, an error when the join or the load failed (rank 0
 * is told) or when rank 0 went away. Backend, dtype and attention are rank 0's; n_threads and
 * device are this process's. */
cinfer_status cinfer_tp_worker_run(const char *dir, const cinfer_load_options *options, int rank);
const cinfer_model_info *cinfer_model_get_info(const cinfer_model *model);

/* What config.json says beyond cinfer_model_info, as the model reads it (defaults filled in,
 * transformers' 4.x and 5.x rope layouts read into one). Strings are the model's: valid until
 * cinfer_model_free. */
typedef struct cinfer_model_config {
    const char *hidden_act; /* the MLP's activation as config.json names it ("silu") */
    double rms_norm_eps;
    const char *rope_type; /* "default", "linear", "dynamic", "llama3" or "yarn" */
    double rope_theta;     /* the base of the rotary frequencies */
    double rope_factor;    /* the rope type's scaling factor; 1 for "default" */
    /* the pretraining length "llama3" and "yarn" scale from; 0 for the other types */
    int rope_original_max_position_embeddings;
    int attention_bias;      /* 1: the q, k, v and o projections have biases */
    int mlp_bias;            /* 1: the gate, up and down projections have biases */
    int tie_word_embeddings; /* 1: lm_head is the embedding table */
    const char *torch_dtype; /* the dtype config.json says the weights were saved in, as written
                                ("bfloat16"); "" when it says none */
} cinfer_model_config;

/* Fills *out with the model's config. */
void cinfer_model_get_config(const cinfer_model *model, cinfer_model_config *out);

/* One tensor of the checkpoint, as its files store it. Strings and shape are the model's: valid
 * until cinfer_model_free. */
typedef struct cinfer_tensor_info {
    const char *name;     /* "model.layers.0.self_attn.q_proj.weight" */
    const char *dtype;    /* safetensors' spelling: "F32", "BF16", "F16", "I64", ... */
    int n_dims;           /* 0 for a scalar */
    const int64_t *shape; /* [n_dims], row-major */
    const char *file;     /* the file that holds it, without its folder ("model.safetensors") */
    int64_t bytes;        /* as stored */
    int used;             /* 1 when the model reads it; 0 for a tensor that its architecture, with
                             this config, has no use for (the model runs without it) */
} cinfer_tensor_info;

/* Where the weights come from: "model.safetensors", "model.safetensors.index.json (3 shards)", or
 * "random weights" (cinfer_model_load_random). Valid until cinfer_model_free. */
const char *cinfer_model_weights_source(const cinfer_model *model);
/* Tensors the checkpoint's files hold, all shards together; 0 for random weights (no file holds
 * them). */
int cinfer_model_n_tensors(const cinfer_model *model);
/* Tensor i of them, in name order (byte-wise); CINFER_ERR_ARGUMENT for an i outside
 * [0, cinfer_model_n_tensors). */
cinfer_status cinfer_model_tensor(const cinfer_model *model, int i, cinfer_tensor_info *out);

/* What rank `rank` of the model split across tp tensor-parallel ranks holds
 * (docs/TENSOR_PARALLEL.md), worked out from the sharding plan and the checkpoint's tensor index,
 * without loading anything: for `cinfer inspect --tp N`, before asking for N GPUs. */
typedef struct cinfer_shard_memory {
    int n_heads, n_kv_heads, intermediate_size; /* the rank's share of the whole model's */
    int kv_replicated;  /* 1 when other ranks hold copies of some of its KV heads */
    int64_t weight_bytes; /* its tensors' bytes as stored: its rows or columns of the split tensors,
                             all of the replicated ones (embedding, norms, DiffLlama's lambdas),
                             the o_proj and down_proj biases on rank 0 only */
    int64_t kv_bytes_per_token; /* its KV heads' cache bytes per token of context, all layers */
} cinfer_shard_memory;

/* CINFER_ERR_ARGUMENT naming the numbers when tp cannot split the model (it does not divide the
 * heads, the KV heads, intermediate_size or vocab_size) or rank is outside [0, tp);
 * CINFER_ERR_UNSUPPORTED for random weights (no tensor index to count). */
cinfer_status cinfer_model_shard_memory(const cinfer_model *model, int tp, int rank,
                                        cinfer_shard_memory *out);

/* ---- devices --------------------------------------------------------------------------------- */

/* 1 when this build has the CUDA backend compiled in, else 0. */
int cinfer_cuda_compiled(void);

typedef struct cinfer_device_info {
    char name[256];     /* "NVIDIA H100 80GB HBM3"; "" when the device could not be queried */
    size_t free_bytes;  /* device memory free when asked (0 when it could not be read) */
    size_t total_bytes; /* device memory in all */
    int compute_major, compute_minor; /* compute capability: 9 and 0 for sm_90 */
} cinfer_device_info;
#define CINFER_MAX_DEVICES 64

/* The CUDA devices this process can use: describes the first min(max, CINFER_MAX_DEVICES) in out
 * and returns how many there are. 0 (not an error) without CUDA compiled in, without a driver or
 * without a device. Reading free memory makes a CUDA context on each device described. */
int cinfer_cuda_devices(cinfer_device_info *out, int max);

/* ---- sessions: sequences with their KV caches ------------------------------------------------ */

typedef struct cinfer_session cinfer_session;

/* One sequence. n_ctx: tokens the KV cache holds; 0 means max_position_embeddings. */
cinfer_status cinfer_session_create(cinfer_model *model, int n_ctx, cinfer_session **out);
/* The most sequences a session holds: a forward pass holds at most this many rows. */
#define CINFER_MAX_SEQS 512

/* n_seqs sequences decoded in lockstep, each with its own KV cache of n_ctx tokens (as
 * llama-batched-bench measures batching): every forward call takes the same number of new tokens
 * from each, so all sit at the same position. n_seqs is 1 to CINFER_MAX_SEQS (a prompt runs in
 * passes of CINFER_MAX_SEQS / n_seqs tokens of each sequence). n_seqs = 1 is
 * cinfer_session_create. */
cinfer_status cinfer_session_create_batch(cinfer_model *model, int n_ctx, int n_seqs,
                                          cinfer_session **out);
void cinfer_session_free(cinfer_session *session);
/* Bytes a session with this context would allocate (KV cache, activations, scratch). */
int64_t cinfer_session_memory_bytes(const cinfer_model *model, int n_ctx);
/* The same for n_seqs sequences (n_seqs KV caches, activations for their rows); -1 for an n_seqs
 * out of range. */
int64_t cinfer_session_memory_bytes_batch(const cinfer_model *model, int n_ctx, int n_seqs);
/* Forget every token of every sequence: the next forward starts at position 0. */
void cinfer_session_reset(cinfer_session *session);
/* Positions used, the same in every sequence. */
int cinfer_session_n_past(const cinfer_session *session);
int cinfer_session_n_ctx(const cinfer_session *session);
int cinfer_session_n_seqs(const cinfer_session *session);

typedef enum cinfer_logits {
    CINFER_LOGITS_NONE = 0, /* only fill the KV cache */
    CINFER_LOGITS_LAST = 1, /* logits of the last token: [vocab_size] */
    CINFER_LOGITS_ALL = 2   /* logits of every token: [n_tokens, vocab_size] */
} cinfer_logits;

/* Runs the model on n_tokens tokens placed after the n_past tokens already in the cache, appends
 * their keys and values to the cache and writes the logits asked for. Token ids are checked against
 * the vocabulary and the length against the context before anything is computed. A session of
 * several sequences refuses it (CINFER_ERR_ARGUMENT): use cinfer_session_forward_batch. */
cinfer_status cinfer_session_forward(cinfer_session *session, const int32_t *tokens, int n_tokens,
                                     cinfer_logits which, float *logits);
/* The same for every sequence of the session at once: tokens are [n_seqs, n_tokens], sequence-
 * major (sequence b's n_tokens ids, then sequence b + 1's). Logits, sequence-major too: LAST gives
 * [n_seqs, vocab_size] (each sequence's last token), ALL [n_seqs · n_tokens, vocab_size]. Each
 * sequence's logits are those a one-sequence session computes for it (the CPU reference: the same
 * bits; rows never mix). With n_seqs = 1 this is cinfer_session_forward. */
cinfer_status cinfer_session_forward_batch(cinfer_session *session, const int32_t *tokens,
                                           int n_tokens, cinfer_logits which, float *logits);

/* Observes the residual stream: called with stage 0 after the embedding, stage 1+i after decoder
 * layer i, and stage n_layers+1 after the final norm, with n_tokens rows of hidden_size floats on
 * the host. Used by tests and `cinfer compare`; NULL turns it off. */
typedef void (*cinfer_hidden_observer)(void *user, int stage, const float *hidden, int n_tokens,
                                       int hidden_size);
void cinfer_session_observe(cinfer_session *session, cinfer_hidden_observer observer, void *user);

/* One greedy decoding step of every sequence: runs tokens[b] (one new token of each sequence,
 * [n_seqs]) at position n_past and writes to next[b] the id of the largest logit of sequence b
 * (the first such, NaN never winning: what a temperature-0 sampler picks). This is the step
 * cinfer_generate takes when it decodes greedily: the argmax runs on the backend's device, so
 * only token ids reach the host, and on CUDA the step is recorded as a graph the first time and
 * replayed after (not while an observer is set: it needs the hidden states on the host). Token
 * ids are checked against the vocabulary first (CINFER_ERR_ARGUMENT); CINFER_ERR_CONTEXT_FULL
 * when the cache is full; CINFER_ERR_ARGUMENT while a profile runs on the session (below). */
cinfer_status cinfer_session_decode_greedy(cinfer_session *session, const int32_t *tokens,
                                           int32_t *next);

/* ---- timing on the device -------------------------------------------------------------------- */

/* Device time between two points of a session's work, the host never waiting in between: mark
 * `slot` is reached when every op the session issued before it has finished (CUDA: an event on
 * the session's stream; the CPU backend's ops finish before they return, so its marks read the
 * host clock). Slots are 0 to CINFER_MAX_MARKS - 1 and may be marked again; CINFER_ERR_ARGUMENT
 * for a slot outside them, or while a profile runs on the session (it uses the marks, and a
 * profile leaves them overwritten). */
#define CINFER_MAX_MARKS 256
cinfer_status cinfer_session_mark(cinfer_session *session, int slot);
/* Waits until mark `to` is reached and returns the seconds from mark `from` to it: NaN when either
 * slot is out of range or was never marked (or no timer could be had for it). */
double cinfer_session_seconds_between(cinfer_session *session, int from, int to);

/* What the ops of a forward pass are, for a profile. */
typedef enum cinfer_op_class {
    CINFER_OP_ATTENTION = 0, /* attention, standard and differential */
    CINFER_OP_MATMUL = 1,    /* every linear layer and lm_head */
    CINFER_OP_NORM = 2,      /* RMSNorm */
    CINFER_OP_OTHER = 3      /* embedding, RoPE, activations, KV cache stores, argmax */
} cinfer_op_class;
#define CINFER_OP_CLASS_COUNT 4

/* "attention", "matmul", "norm", "other"; "unknown" for a value out of range. */
const char *cinfer_op_class_name(cinfer_op_class op_class);

typedef struct cinfer_profile {
    double seconds[CINFER_OP_CLASS_COUNT]; /* device time of the class's ops, indexed by class */
    int calls[CINFER_OP_CLASS_COUNT];      /* how many of its ops ran */
    int dropped;                           /* ops left untimed for want of memory to note them */
} cinfer_profile;

/* Where a session's forward passes spend their time, op class by op class. From start to stop,
 * cinfer_session_forward and _forward_batch time each op on the device between two marks, the
 * host not waiting between ops, so that a pass runs as it would unprofiled; where the host is
 * slower to issue an op than the device to run the one before (small decode ops on a GPU), the
 * op's time includes that wait. A recorded decode step cannot be timed op by op: while a profile
 * runs, cinfer_session_decode_greedy, cinfer_generate and cinfer_session_mark refuse with
 * CINFER_ERR_ARGUMENT. One profile at a time in the process (start refuses a second with
 * CINFER_ERR_ARGUMENT), started and stopped from one thread; stop it before freeing the session. */
cinfer_status cinfer_session_profile_start(cinfer_session *session);
/* Ends the profile and writes what it measured to *profile; CINFER_ERR_ARGUMENT when no profile
 * runs on this session. */
cinfer_status cinfer_session_profile_stop(cinfer_session *session, cinfer_profile *profile);

/* ---- sampling and generation ----------------------------------------------------------------- */

/* A zeroed struct means greedy decoding with every filter off. */
typedef struct cinfer_sampling {
    float temperature; /* 0: greedy (argmax) */
    int top_k;         /* 0: off */
    float top_p;       /* 0 or >= 1: off; else keep the smallest set holding this mass */
    uint64_t seed;     /* same seed, same logits: same tokens */
} cinfer_sampling;

typedef struct cinfer_sampler cinfer_sampler;
cinfer_status cinfer_sampler_create(const cinfer_sampling *params, int vocab_size,
                                    cinfer_sampler **out);
void cinfer_sampler_free(cinfer_sampler *sampler);
/* Picks a token from one row of logits (not modified). */
int32_t cinfer_sampler_sample(cinfer_sampler *sampler, const float *logits);

typedef enum cinfer_stop_reason {
    CINFER_STOP_MAX_TOKENS = 0, /* generated max_new_tokens */
    CINFER_STOP_EOS = 1,        /* generated an eos or stop token (it is included) */
    CINFER_STOP_CONTEXT = 2,    /* the KV cache is full */
    CINFER_STOP_CALLBACK = 3    /* the token callback asked to stop */
} cinfer_stop_reason;

typedef struct cinfer_generate_params {
    int max_new_tokens;
    cinfer_sampling sampling;
    int ignore_eos; /* keep going past eos tokens (config.json's and stop_tokens) */
    /* Tokens that end generation as config.json's eos tokens do, e.g. a chat checkpoint's
     * end-of-turn from generation_config.json or the tokenizer; may be NULL. */
    const int32_t *stop_tokens;
    int n_stop_tokens;
} cinfer_generate_params;

typedef struct cinfer_generate_stats {
    int n_prompt;
    int n_generated;
    double prefill_seconds;
    double decode_seconds; /* all steps after the first generated token */
    cinfer_stop_reason stop_reason;
} cinfer_generate_stats;

/* eos_token_id of dir/generation_config.json, where chat checkpoints list the tokens that end a
 * turn beside config.json's eos tokens (Llama 3 Instruct: <|eot_id|>): pass them as stop_tokens.
 * Writes them to ids and their count to *n; *n = 0 when the folder has no such file.
 * CINFER_ERR_ARGUMENT when they are more than max (CINFER_MAX_EOS_TOKENS is always enough: a
 * file that lists more is refused with CINFER_ERR_CONFIG, as is a malformed field;
 * CINFER_ERR_FORMAT for malformed JSON). */
#define CINFER_MAX_EOS_TOKENS 16
cinfer_status cinfer_generation_eos_tokens(const char *dir, int32_t *ids, int max, int *n);

/* Called for every generated token as soon as it is sampled; return non-zero to stop. */
typedef int (*cinfer_token_callback)(void *user, int32_t token);

/* One sequence: a session of several refuses it with CINFER_ERR_ARGUMENT.
 * Feeds the prompt (after whatever the session already holds), then samples up to
 * max_new_tokens tokens. prompt_logits, when not NULL, receives the logits of every prompt
 * position: [n_prompt, vocab_size]. The last generated token is not fed back into the cache
 * (its logits would go unused): to continue the sequence, pass it first in the next prompt. */
cinfer_status cinfer_generate(cinfer_session *session, const int32_t *prompt, int n_prompt,
                              const cinfer_generate_params *params, cinfer_token_callback on_token,
                              void *user, float *prompt_logits, cinfer_generate_stats *stats);

/* ---- serving many requests: the continuous-batching engine ---------------------------------- */

/* An engine serves many requests at once over one model (vLLM's LLMEngine): every step it runs
 * the decode rows of the sequences in flight and chunks of waiting prompts in one forward pass,
 * within a token budget, over a paged KV cache shared by all of them (blocks of block_size
 * positions, a block table per sequence, full blocks shared between prompts that begin alike).
 * A request joins at the next step and leaves as soon as it is done; when the cache runs out, the
 * most recently admitted sequence is preempted (its blocks freed) and recomputed later, its tokens
 * kept. docs/SERVING.md describes the scheduler.
 *
 * Threading: cinfer_engine_add_request, cinfer_engine_abort, cinfer_engine_get_stats and
 * cinfer_engine_wait may be called from any thread at any time. cinfer_engine_step is called from
 * one thread at a time (the engine thread); the outputs it returns are valid until its next call.
 * cinfer_engine_free after every other call has returned. */
typedef struct cinfer_engine cinfer_engine;

/* A zeroed struct takes every default. */
typedef struct cinfer_engine_options {
    int block_size;         /* positions per KV block; 0: 16 */
    int max_batched_tokens; /* rows (tokens over all sequences) per step; 0: 2048 */
    int max_seqs;           /* sequences running at once, 1 to CINFER_MAX_SEQS; 0: 256 */
    /* prompt plus new tokens of one request; 0: max_position_embeddings. Past it only where the
     * RoPE frequencies do not depend on the length (not rope_scaling type "dynamic"). */
    int max_model_len;
    /* The size of the KV pool, the first that is set: n_kv_blocks blocks; kv_cache_bytes bytes;
     * on CUDA, gpu_memory_utilization of the device's memory less what is already used (weights,
     * other processes) and the engine's activations (0: 0.90, as vLLM's); on the CPU,
     * min(4 GiB, what max_seqs requests of max_model_len need). */
    int n_kv_blocks;
    int64_t kv_cache_bytes;
    double gpu_memory_utilization;
    int disable_prefix_caching; /* full blocks of prompts are shared unless this is set */
    int disable_cuda_graphs;    /* decode-only steps are recorded and replayed unless set */
} cinfer_engine_options;

#define CINFER_MAX_TOP_LOGPROBS 20

/* One request's generation. A zeroed struct with max_new_tokens set is greedy, stopping at
 * config.json's eos tokens. */
typedef struct cinfer_request_params {
    int max_new_tokens;
    cinfer_sampling sampling; /* its seed makes the request's draws reproducible */
    int ignore_eos;           /* keep going past eos and stop tokens */
    const int32_t *stop_tokens; /* copied at submission; may be NULL */
    int n_stop_tokens;
    int logprobs;     /* non-zero: each output carries the log-probability of its token */
    int top_logprobs; /* 0 to CINFER_MAX_TOP_LOGPROBS alternatives with theirs (needs logprobs) */
    /* When not NULL: the caller's [n_prompt, vocab_size] buffer, which receives the logits of
     * every prompt position before the request's first output (as cinfer_generate's
     * prompt_logits). Such a request computes its whole prompt: it takes nothing from the
     * prefix cache. */
    float *prompt_logits;
} cinfer_request_params;

typedef enum cinfer_finish_reason {
    CINFER_FINISH_NONE = 0,   /* still running */
    CINFER_FINISH_STOP = 1,   /* an eos or stop token (it is the last token given) */
    CINFER_FINISH_LENGTH = 2, /* max_new_tokens */
    CINFER_FINISH_ABORT = 3   /* cinfer_engine_abort */
} cinfer_finish_reason;

/* What one step did for one request: a new token, and whether the request is done. */
typedef struct cinfer_request_output {
    uint64_t request_id;
    int32_t token; /* -1 when the step gave none (an abort, or max_new_tokens = 0) */
    float logprob; /* log-softmax of the model's logits at token (with params.logprobs) */
    int n_top;     /* params.top_logprobs alternatives, most likely first */
    int32_t top_tokens[CINFER_MAX_TOP_LOGPROBS];
    float top_logprobs[CINFER_MAX_TOP_LOGPROBS];
    cinfer_finish_reason finish_reason;
    int n_prompt, n_generated; /* counts so far */
    int n_cached_prompt;       /* prompt tokens the prefix cache supplied at admission */
    double queued_seconds;     /* from submission to its first admission; -1 until admitted */
} cinfer_request_output;

typedef struct cinfer_engine_stats {
    int n_running, n_waiting;
    int block_size;
    int n_blocks;        /* in the pool */
    int n_blocks_used;   /* held by sequences */
    int n_blocks_cached; /* free, but holding a prefix a new prompt may reuse */
    int n_blocks_used_peak; /* the most held at once, as each step ran (since creation) */
    int64_t kv_capacity_tokens; /* n_blocks · block_size */
    int64_t kv_bytes;           /* the pool's memory, K and V of every layer */
    uint64_t n_steps, n_preemptions, n_finished, n_aborted;
    uint64_t prompt_tokens_queried; /* prompt tokens looked up in the prefix cache */
    uint64_t prompt_tokens_hit;     /* of which the cache held (prefix hits, in tokens) */
    uint64_t prompt_tokens_computed, generated_tokens;
} cinfer_engine_stats;

/* The engine gets a backend of its own on the model's device; the model must outlive it. */
cinfer_status cinfer_engine_create(cinfer_model *model, const cinfer_engine_options *options,
                                   cinfer_engine **out);
void cinfer_engine_free(cinfer_engine *engine);
/* Queues a request; *id names it in outputs and to cinfer_engine_abort. Refused
 * (CINFER_ERR_ARGUMENT, nothing queued) when a token is outside the vocabulary, when the prompt is
 * empty, or when it can never fit: prompt plus max_new_tokens past max_model_len or past the
 * pool; the message gives both numbers. */
cinfer_status cinfer_engine_add_request(cinfer_engine *engine, const int32_t *prompt, int n_prompt,
                                        const cinfer_request_params *params, uint64_t *id);
/* Ends a request at the next step (its blocks freed, a last output with CINFER_FINISH_ABORT).
 * Returns 0 when the request is unknown or already finished. */
int cinfer_engine_abort(cinfer_engine *engine, uint64_t id);
/* Runs one step: admits, schedules, runs the forward pass, samples. *outputs points at *n_outputs
 * outputs, one per request that got a token or finished. A step with nothing to do returns at
 * once with none. */
cinfer_status cinfer_engine_step(cinfer_engine *engine, const cinfer_request_output **outputs,
                                 int *n_outputs);
/* Non-zero while a request is waiting or running (submitted ones included). */
int cinfer_engine_has_work(cinfer_engine *engine);
/* Blocks until there is work or timeout_seconds pass; non-zero when there is work. */
int cinfer_engine_wait(cinfer_engine *engine, double timeout_seconds);
void cinfer_engine_get_stats(cinfer_engine *engine, cinfer_engine_stats *out);
/* Bytes of KV pool and positions it holds that an engine with these options would have (the
 * pool's size only, as inspect reports it). */
cinfer_status cinfer_engine_kv_capacity(const cinfer_model *model,
                                        const cinfer_engine_options *options, int64_t *kv_bytes,
                                        int64_t *kv_tokens);

/* ---- tokenizer: Hugging Face tokenizer.json, encode and streaming decode --------------------- */

/* Reads tokenizer.json as the `tokenizers` library does (BPE models: byte-level as in GPT-2 and
 * Llama 3, SentencePiece-style with byte fallback as in Llama 2 and Mistral), and
 * tokenizer_config.json, special_tokens_map.json and chat_template.jinja where present. A
 * tokenizer is read-only once loaded: any number of threads may use it at once. */
typedef struct cinfer_tokenizer cinfer_tokenizer;

/* dir: a folder with tokenizer.json; no weights or config.json needed. Anything the file asks for
 * that this reader does not implement fails with CINFER_ERR_UNSUPPORTED naming the JSON path. */
cinfer_status cinfer_tokenizer_load(const char *dir, cinfer_tokenizer **out);
void cinfer_tokenizer_free(cinfer_tokenizer *tok);

/* Text (UTF-8, n_bytes long, NULs allowed) to ids, as tokenizers' encode(text,
 * add_special_tokens) does. add_special: apply the post_processor template (e.g. a leading BOS);
 * when tokenizer.json has no post_processor, tokenizer_config.json's add_bos_token/add_eos_token.
 * *ids is malloc'd (also when *n_ids is 0); the caller frees it. Invalid UTF-8 is refused. */
cinfer_status cinfer_tokenize(const cinfer_tokenizer *tok, const char *text, size_t n_bytes,
                              int add_special, int32_t **ids, int *n_ids);

/* Highest token id + 1, added tokens included. */
int cinfer_tokenizer_vocab_size(const cinfer_tokenizer *tok);
/* The vocabulary string of a token (e.g. "ĠHello", "▁Hello", "<0x0A>"); NULL for an id out of
 * range or one no token has. */
const char *cinfer_tokenizer_piece(const cinfer_tokenizer *tok, int32_t id);
/* The bytes one token stands for on its own, before they join into UTF-8 text: its piece through
 * the tokenizer's decoders ("ĠHello" and "▁Hello" give " Hello", "<0x0A>" a newline), which may
 * be part of a character ("<0xE2>" gives the byte E2 alone). For showing tokens one by one (cinfer
 * tokenize); to decode text, use the detokenizer. *bytes is malloc'd, n_bytes long and
 * NUL-terminated; the caller frees it. CINFER_ERR_ARGUMENT for an id no token has. */
cinfer_status cinfer_tokenizer_token_bytes(const cinfer_tokenizer *tok, int32_t id, char **bytes,
                                           size_t *n_bytes);
/* The id of a vocabulary string (added tokens first), -1 if absent. */
int32_t cinfer_tokenizer_find(const cinfer_tokenizer *tok, const char *piece);
/* 1 for added tokens marked special (skipped by decoding with skip_special), else 0. */
int cinfer_tokenizer_is_special(const cinfer_tokenizer *tok, int32_t id);
/* tokenizer_config.json's chat_template (the one named "default" when it is a list), else the
 * contents of chat_template.jinja; NULL if neither exists. */
const char *cinfer_tokenizer_chat_template(const cinfer_tokenizer *tok);
/* bos_token / eos_token from tokenizer_config.json (or special_tokens_map.json); NULL if none. */
const char *cinfer_tokenizer_bos_token(const cinfer_tokenizer *tok);
const char *cinfer_tokenizer_eos_token(const cinfer_tokenizer *tok);
/* Their ids; -1 if there is no such token or it is not in the vocabulary. */
int32_t cinfer_tokenizer_bos_id(const cinfer_tokenizer *tok);
int32_t cinfer_tokenizer_eos_id(const cinfer_tokenizer *tok);

/* Streaming decode: feed ids one at a time and get back the text that became complete. The
 * concatenation of all pieces and of what finish returns equals tokenizers' decode(ids,
 * skip_special_tokens) of the whole list: bytes of a character split across tokens wait for the
 * rest, decoders that act on the start of the text act only at the start of the stream. */
typedef struct cinfer_detokenizer cinfer_detokenizer;

/* skip_special: drop special tokens, as decode(..., skip_special_tokens=True). */
cinfer_status cinfer_detokenizer_create(const cinfer_tokenizer *tok, int skip_special,
                                        cinfer_detokenizer **out);
/* *text (n_bytes long, also NUL-terminated, valid UTF-8) stays valid until the next call on d.
 * An id outside [0, vocab_size) is CINFER_ERR_ARGUMENT; an id in range that no token has is
 * skipped, as tokenizers does. */
cinfer_status cinfer_detokenize(cinfer_detokenizer *d, int32_t id, const char **text,
                                size_t *n_bytes);
/* What is still held back; bytes that never became valid UTF-8 come out as U+FFFD, as tokenizers'
 * lossy decode writes them. d can then take the ids of a new text. */
void cinfer_detokenizer_finish(cinfer_detokenizer *d, const char **text, size_t *n_bytes);
void cinfer_detokenizer_free(cinfer_detokenizer *d);

/* The whole list at once; *text is malloc'd and NUL-terminated; the caller frees it. A token that
 * stands for the byte 0 puts a NUL inside the text: where that matters, stream with the
 * detokenizer, which gives lengths. */
cinfer_status cinfer_decode(const cinfer_tokenizer *tok, const int32_t *ids, int n_ids,
                            int skip_special, char **text);

/* ---- chat ---------------------------------------------------------------------------------- */

/* One turn of a conversation: role "system", "user" or "assistant", and its text (UTF-8). */
typedef struct cinfer_chat_message {
    const char *role;
    const char *content;
} cinfer_chat_message;

/* Formats a conversation with the tokenizer's chat template, as transformers'
 * apply_chat_template(messages, tokenize=False, add_generation_prompt) renders it; encode the
 * result with add_special = 0 (the template writes its own BOS). cinfer recognizes the template
 * families of Llama-family chat checkpoints (llama3 incl. 3.1/3.2, llama2, mistral, chatml,
 * zephyr) instead of running Jinja: any other template fails with CINFER_ERR_UNSUPPORTED, and a
 * conversation the template itself would refuse with CINFER_ERR_ARGUMENT. *text is malloc'd. */
cinfer_status cinfer_chat_apply(const cinfer_tokenizer *tok, const cinfer_chat_message *messages,
                                int n_messages, int add_generation_prompt, char **text);

#ifdef __cplusplus
}
#endif
#endif /* CINFER_H */
