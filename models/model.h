/* What a loaded model is: its config, its weights (views into the checkpoint), and the one place
 * where the two architectures differ, their attention. */
#ifndef CINFER_MODEL_H
#define CINFER_MODEL_H

#include <stdbool.h>

#include "../kernels/backend.h"
#include "../include/cinfer.h"
#include "../loaders/checkpoint.h"
#include "../common/random_weights.h"

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

/* The architecture-specific parts. Everything else is the Llama decoder in models/llama.c. */
typedef struct ci_architecture {
    const char *name;
    /* Binds the tensors layer `layer` has beyond the Llama layout and derives its constants. */
    cinfer_status (*bind_layer_extras)(cinfer_model *model, int layer);
    /* The attention core: out [T, H, D] from q [T, H, D] and the layer's cache. */
    void (*attention)(ci_backend *be, const cinfer_model *model, int layer, ci_tensor *out,
                      const ci_tensor *q, const ci_tensor *k_cache, const ci_tensor *v_cache,
                      int pos0);
} ci_architecture;

extern const ci_architecture ci_llama_architecture;
extern const ci_architecture ci_diffllama_architecture;

struct cinfer_model {
    ci_checkpoint *checkpoint;
    const ci_config *config; /* the checkpoint's */
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
     * (see engine/backend.h for the dtypes); NULL on the CPU, where they point into the files. */
    void *device_weights;
    size_t device_weight_bytes;
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

/* RoPE inverse frequencies (head_dim/2 of them) and the cos/sin scale for a forward call whose
 * last position is seq_len − 1, as transformers computes them for every rope type. Only dynamic
 * scaling depends on seq_len. */
void ci_rope_frequencies(const ci_config *config, int seq_len, float *inv_freq,
                         float *attention_scaling);

#endif
