/* What a checkpoint's config.json says, as every layer reads it: loaders/config.c fills it, the
 * architecture's descriptor (models/) completes it with its own defaults and checks, the kernels
 * size their scratch by it, the models build their graph from it. Field names and defaults
 * follow transformers (LlamaConfig, DiffLlamaConfig). */
#ifndef CINFER_MODEL_CONFIG_H
#define CINFER_MODEL_CONFIG_H

#include <stdbool.h>

typedef enum ci_activation {
    CI_ACT_SILU,      /* x·sigmoid(x): "silu", "swish" */
    CI_ACT_GELU,      /* exact, with erf: "gelu" */
    CI_ACT_GELU_TANH, /* tanh approximation: "gelu_new", "gelu_pytorch_tanh", "gelu_fast" */
    CI_ACT_RELU       /* "relu" */
} ci_activation;

typedef enum ci_rope_type {
    CI_ROPE_DEFAULT,
    CI_ROPE_LINEAR,  /* inv_freq / factor */
    CI_ROPE_DYNAMIC, /* NTK-aware: base grows once the sequence passes max_position_embeddings */
    CI_ROPE_LLAMA3,  /* per-band scaling of inv_freq (Llama 3.1+) */
    CI_ROPE_YARN     /* interpolation ramp between bands plus an attention factor */
} ci_rope_type;

typedef struct ci_rope_config {
    ci_rope_type type;
    double theta;
    double factor;                        /* linear, dynamic, llama3, yarn */
    double low_freq_factor;               /* llama3 */
    double high_freq_factor;              /* llama3 */
    int original_max_position_embeddings; /* llama3, yarn */
    double attention_factor;              /* yarn: < 0 means derived from factor and mscale */
    double beta_fast, beta_slow;          /* yarn */
    double mscale, mscale_all_dim;        /* yarn: 0 when absent */
    bool truncate;                        /* yarn */
} ci_rope_config;

enum { CI_MAX_EOS_TOKENS = 16 };

typedef struct ci_config {
    /* What the model is, as the file says: architectures[0] (a Hugging Face class name such as
     * "LlamaForCausalLM"), else model_type ("llama"); "" when absent. models/architecture.c finds
     * the architecture it names. */
    char architecture[96];
    char model_type[32];
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    double rms_norm_eps; /* NaN until set: its default is the architecture's (models/) */
    ci_activation hidden_act;
    char hidden_act_name[32];
    ci_rope_config rope;
    bool attention_bias;
    bool mlp_bias;
    bool tie_word_embeddings;
    char torch_dtype[16]; /* as written ("bfloat16"), "" when absent */
    int bos_token_id;     /* -1 when null */
    int n_eos;
    int eos_token_ids[CI_MAX_EOS_TOKENS];
} ci_config;

#endif
