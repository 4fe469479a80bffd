/* config.json of a Hugging Face Llama or DiffLlama checkpoint, read with cJSON and checked for
 * consistency before any weight is touched. Field names and defaults follow transformers
 * (LlamaConfig, DiffLlamaConfig); both the 4.x layout (rope_theta + rope_scaling) and the 5.x
 * layout (rope_parameters) are read. */
#ifndef CINFER_CONFIG_H
#define CINFER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "../include/cinfer.h"

typedef enum ci_arch { CI_ARCH_LLAMA, CI_ARCH_DIFFLLAMA } ci_arch;

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
    ci_arch arch;
    const char *architecture; /* "LlamaForCausalLM" or "DiffLlamaForCausalLM" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    double rms_norm_eps;
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

/* Reads and validates path (a config.json). Messages start with the path. */
cinfer_status config_load(const char *path, ci_config *config);
/* eos_token_id of dir/generation_config.json (chat checkpoints list their end-of-turn tokens
 * there); *n_ids = 0 when the file does not exist. */
cinfer_status config_load_generation_eos(const char *dir, int ids[CI_MAX_EOS_TOKENS], int *n_ids);
/* The same from JSON text in memory; name is used in messages. */
cinfer_status config_parse(const char *name, const char *json, size_t length, ci_config *config);

const char *ci_rope_type_name(ci_rope_type type);

#endif
