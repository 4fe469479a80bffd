/* What a loaded model is: its config, its architecture (models/architecture.h), its weights
 * (views into the checkpoint, or device copies), and the forward pass every architecture runs
 * (models/llama.c) with the inputs of one step given explicitly. */
#ifndef CINFER_MODEL_H
#define CINFER_MODEL_H

#include <stdbool.h>

#include "../common/random_weights.h"
#include "../include/cinfer.h"
#include "../kernels/backend.h"
#include "../kernels/comm.h"
#include "../loaders/checkpoint.h"
#include "architecture.h"
#include "shard.h"

typedef struct ci_layer {
    ci_tensor input_layernorm;        /* [E] */
    ci_tensor q_proj, k_proj, v_proj; /* [H·D, E], [G·D, E], [G·D, E] */
    ci_tensor q_bias, k_bias, v_bias; /* [H·D], [G·D], [G·D]: data NULL without attention_bias */
    ci_tensor o_proj, o_bias;         /* [E, H·D], [E] */
    ci_tensor post_attention_layernorm; /* [E] */
    ci_tensor gate_proj, up_proj;       /* [I, E] */
    ci_tensor gate_bias, up_bias;       /* [I]: data NULL without mlp_bias */
    ci_tensor down_proj, down_bias;     /* [E, I], [E] */
    /* DiffLlama only. The lambdas are weights, so lambda is a constant of the layer:
     * lambda = exp(λq1·λk1) − exp(λq2·λk2) + lambda_init. */
    float lambda, lambda_init;
} ci_layer;

/* The tensors of ci_layer above, biases included: 2 norms, 7 matrices, 7 biases. */
enum { CI_LAYER_MAX_TENSORS = 16 };

/* A tensor of a random model that the device draws (cinfer_model_load_random on CUDA): between
 * binding and the upload, the tensor's data points at this entry, which marks it present (data
 * NULL would mean an absent bias) though it holds no values anywhere yet. */
typedef struct ci_device_draw {
    ci_tensor *tensor; /* the model's own tensor, in the config's dtype, as the files would be */
    ci_random_draw draw;
} ci_device_draw;

extern const ci_architecture ci_llama_architecture;
extern const ci_architecture ci_diffllama_architecture;

struct cinfer_model {
    ci_checkpoint *checkpoint;
    const ci_config *config; /* the checkpoint's; a tensor-parallel rank's own (shard.local) */
    const ci_architecture *arch;
    cinfer_load_options options;
    ci_tensor embed_tokens; /* [V, E] */
    ci_layer *layers;       /* [n_layers] */
    ci_tensor norm;         /* [E] */
    ci_tensor lm_head;      /* [V, E]; the embedding itself when tie_word_embeddings */
    cinfer_model_info info;
    bool *bound; /* [checkpoint->n_index]: tensors the model uses; the rest are unused */
    /* host memory the model owns: tensors the file stores misaligned, copied once (rare),
     * random weights drawn on the host, and device_draws */
    void **aligned_copies;
    int n_aligned_copies;
    /* a random model on CUDA: the tensors the upload draws on the device, in binding order;
     * NULL otherwise */
    ci_device_draw *device_draws; /* [max_device_draws] */
    int n_device_draws, max_device_draws;
    /* CUDA backend: one device allocation holds every weight, and the tensors above point into it
     * (see kernels/backend.h for the dtypes); NULL on the CPU, where they point into the files. */
    void *device_weights;
    size_t device_weight_bytes;
    /* Tensor parallelism (models/shard.h, docs/TENSOR_PARALLEL.md): the part of the checkpoint this
     * model holds (tp 1: all of it), and the communicator of its rank, through which the forward
     * pass sums o_proj's and down_proj's partial products and gathers the logits; NULL for a
     * whole model, which then runs exactly as without tensor parallelism. */
    ci_shard_plan shard;
    ci_comm *comm;
    /* Bytes of the checkpoint's files the bound tensors were taken from: views span them, slices
     * were copied from them (a rank's share, measured by tests/test_tensor_parallel.cpp); for
     * random weights, the bytes of the tensors (or the rank's parts of them) drawn. */
    int64_t bytes_read;
    /* A model loaded with tensor_parallel = tp > 1 through cinfer_model_load: this is rank 0's
     * model, and followers (engine/tp_ranks.h) has ranks 1 .. tp-1, threads of this process or
     * processes of their own, do what its sessions and engines do; info describes the whole
     * model. tp 0 and followers NULL otherwise (a follower's own model included). */
    int tp;
    struct ci_tp_ranks *followers;
};

/* Looks name up in the checkpoint and checks it against the shape the config implies:
 * `meaning` spells that shape in config terms ("[num_attention_heads*head_dim, hidden_size]"),
 * so that a mismatch says which field disagrees. `required_by`, when not NULL, names the config
 * setting that asks for the tensor ("attention_bias = true"), for the message when it is missing.
 * For an architecture's extras: the tensor's values are readable on the host after the call, on
 * every backend (a random model draws it on the host even on CUDA), and it is not uploaded.
 */
cinfer_status ci_bind_weight(cinfer_model *model, const char *name, int n_dims,
                             const int64_t *shape, const char *meaning, const char *required_by,
                             ci_tensor *out);

/* How the tensor called name is drawn in a random model of this seed: norm weights 1, biases 0,
 * the rest uniform with transformers' standard deviation. */
ci_random_draw ci_random_draw_of(uint64_t seed, const char *name);

/* Binds every tensor of the Llama layout (and the architecture's extras) into model. */
cinfer_status ci_bind_model_weights(cinfer_model *model);
/* CUDA: uploads every bound tensor to the model's device (matrices in the run dtype, vectors in
 * F32; a random model's are drawn there) and points the model's tensors at the copies. */
cinfer_status ci_upload_weights(cinfer_model *model);
/* Frees what ci_upload_weights allocated (nothing when it did not run). */
void ci_free_device_weights(cinfer_model *model);

/* RoPE inverse frequencies (head_dim/2 of them) and the cos/sin scale for a forward call whose
 * last position is seq_len − 1, as transformers computes them for every rope type. Only dynamic
 * scaling depends on seq_len. */
void ci_rope_frequencies(const ci_config *config, int seq_len, float *inv_freq,
                         float *attention_scaling);

/* ---- the forward pass (models/llama.c) ---------------------------------------------------------
 * A step takes rows of tokens in one of two layouts:
 *   - lockstep (a session): T new tokens of each of B sequences, all at positions
 *     pos0 .. pos0+T-1. Its B·T rows are sequence-major (row b·T + t is token t of sequence b):
 *     row-wise ops just see more rows, and the position-aware ops (rope, kv_store, attention) see
 *     [B, T, ...] views over caches [B, n_ctx, G, D];
 *   - ragged (the engine): `paged` describes R rows from S sequences each at its own positions,
 *     and the caches are per-layer pools of blocks (kernels/backend.h: ci_paged_step).
 * Every tensor is on the backend's device; the caller owns them all. */

/* The working buffers of a step, for up to R rows (R = B·T at most what they were sized for). */
typedef struct ci_activations {
    ci_tensor x;      /* [R, E] the residual stream */
    ci_tensor x_norm; /* [R, E] its normalized copy that feeds attention, the MLP and lm_head */
    ci_tensor q;      /* [R, H, D] */
    ci_tensor k_new;  /* [R, G, D] keys of the new tokens, rotated, then stored in the cache */
    ci_tensor v_new;  /* [R, G, D] their values */
    ci_tensor attn;   /* [R, H, D] attention output, input of o_proj */
    ci_tensor gate;   /* [R, I] */
    ci_tensor up;     /* [R, I] */
} ci_activations;

/* Called with the residual stream after each stage (0: the embedding, 1+l: decoder layer l,
 * n_layers+1: the final norm), on the device; a NULL function observes nothing. */
typedef struct ci_hidden_hook {
    void (*observe)(void *user, int stage, const ci_tensor *hidden);
    void *user;
} ci_hidden_hook;

typedef struct ci_forward_step {
    const ci_tensor *tokens; /* I32 [rows]: B·T sequence-major (lockstep), or R (ragged) */
    int n_seqs, n_tokens;    /* lockstep: B, T */
    int pos0;                /* lockstep */
    const ci_paged_step *paged; /* ragged: the rows' sequences and positions; NULL: lockstep */
    const ci_rope_freqs *rope;  /* the frequencies of this call's length (ci_rope_frequencies) */
    /* per layer: lockstep caches [B, n_ctx, G, D], or pools [n_blocks, block_size, G, D]; the step
     * stores its rows' keys and values there */
    ci_tensor *k_cache, *v_cache;
    ci_hidden_hook hook;
} ci_forward_step;

/* Rows the step runs. */
static inline int ci_forward_rows(const ci_forward_step *step) {
    return step->paged ? step->paged->n_rows : step->n_seqs * step->n_tokens;
}

/* The decoder over one step: x = embed_tokens[tokens], the layers, and the final norm, whose
 * result stays in act->x_norm (rows [0, B·T)) for ci_model_logits.
 * A tensor-parallel rank's model (model->comm set) runs its part and the collectives between
 * them; every rank of the group must run the same steps in lockstep, with activations and caches
 * of its own local config. CINFER_ERR_COMM when a collective failed (the rest of the step is
 * skipped; the group is unusable); a whole model always returns CINFER_OK. */
cinfer_status ci_model_forward(ci_backend *be, const cinfer_model *model,
                               const ci_forward_step *step, ci_activations *act);
/* logits = lm_head(normed) for the rows of normed [R, E] -> logits [R, V], on the device.
 * A rank computes the logits of its vocabulary rows and gathers everyone's: every rank gets all V
 * columns. Fails as ci_model_forward does. */
cinfer_status ci_model_logits(ci_backend *be, const cinfer_model *model, ci_tensor *logits,
                              const ci_tensor *normed);

#endif
