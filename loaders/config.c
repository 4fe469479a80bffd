#include "config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "json.h"
#include "read_file.h"

/* config.json files are a few KB; anything past this is not one. */
#define CONFIG_MAX_BYTES (16u << 20)

typedef struct parser {
    const char *name; /* file name for messages */
    const cJSON *root;
} parser;

static bool present(const cJSON *item) { return item && !cJSON_IsNull(item); }

/* A short description of a JSON value for messages: 12, 1.5, "text", an array, ... */
static const char *describe(const cJSON *item, char *buf, size_t size) {
    if (cJSON_IsNumber(item))
        snprintf(buf, size, "%.17g", item->valuedouble);
    else if (cJSON_IsString(item))
        snprintf(buf, size, "\"%.40s\"", item->valuestring);
    else if (cJSON_IsBool(item))
        snprintf(buf, size, "%s", cJSON_IsTrue(item) ? "true" : "false");
    else
        snprintf(buf, size, "%s", cJSON_IsArray(item) ? "an array" : "an object");
    return buf;
}

/* "factor" at the top level, "rope_scaling.factor" inside the object of that name: cJSON keeps
 * an object's key in its `string`, and the root has none. */
static const char *label(const cJSON *object, const char *field, char *buf, size_t size) {
    if (!object->string) return field;
    snprintf(buf, size, "%s.%s", object->string, field);
    return buf;
}

/* Integer field: absent or null gives fallback; required fields pass required = true. */
static cinfer_status read_int(const parser *p, const cJSON *object, const char *field,
                              bool required, int fallback, int minimum, int *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, field);
    char name[96];
    if (!present(item)) {
        if (required)
            return CI_FAIL(CINFER_ERR_CONFIG, "%s: required field '%s' is missing", p->name,
                           label(object, field, name, sizeof name));
        *out = fallback;
        return CINFER_OK;
    }
    double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!(v >= minimum) || v > INT_MAX || v != floor(v)) {
        char got[64];
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: field '%s' must be an integer >= %d, got %s",
                       p->name, label(object, field, name, sizeof name), minimum,
                       describe(item, got, sizeof got));
    }
    *out = (int)v;
    return CINFER_OK;
}

static cinfer_status read_double(const parser *p, const cJSON *object, const char *field,
                                 bool required, double fallback, double *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, field);
    char name[96];
    if (!present(item)) {
        if (required)
            return CI_FAIL(CINFER_ERR_CONFIG, "%s: required field '%s' is missing", p->name,
                           label(object, field, name, sizeof name));
        *out = fallback;
        return CINFER_OK;
    }
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: field '%s' must be a finite number", p->name,
                       label(object, field, name, sizeof name));
    *out = item->valuedouble;
    return CINFER_OK;
}

static cinfer_status read_bool(const parser *p, const cJSON *object, const char *field,
                               bool fallback, bool *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, field);
    char name[96];
    if (!present(item)) {
        *out = fallback;
        return CINFER_OK;
    }
    if (!cJSON_IsBool(item))
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: field '%s' must be true or false", p->name,
                       label(object, field, name, sizeof name));
    *out = cJSON_IsTrue(item);
    return CINFER_OK;
}

/* What the model is, as written: architectures[0], else model_type. Which architectures cinfer
 * runs is the models' registry's to say (models/architecture.c), not the reader's. */
static cinfer_status read_architecture(const parser *p, ci_config *c) {
    const cJSON *architectures = cJSON_GetObjectItemCaseSensitive(p->root, "architectures");
    const cJSON *model_type = cJSON_GetObjectItemCaseSensitive(p->root, "model_type");
    if (cJSON_IsString(model_type))
        snprintf(c->model_type, sizeof c->model_type, "%s", model_type->valuestring);
    if (cJSON_IsArray(architectures) && cJSON_GetArraySize(architectures) > 0) {
        const cJSON *first = architectures->child;
        if (!cJSON_IsString(first))
            return CI_FAIL(CINFER_ERR_CONFIG, "%s: field 'architectures' must hold strings",
                           p->name);
        snprintf(c->architecture, sizeof c->architecture, "%s", first->valuestring);
        return CINFER_OK;
    }
    if (cJSON_IsString(model_type)) return CINFER_OK;
    return CI_FAIL(CINFER_ERR_CONFIG,
                   "%s: neither 'architectures' nor 'model_type' says what the model is", p->name);
}

static cinfer_status read_activation(const parser *p, ci_config *c) {
    static const struct {
        const char *name;
        ci_activation act;
    } known[] = {{"silu", CI_ACT_SILU},
                 {"swish", CI_ACT_SILU},
                 {"gelu", CI_ACT_GELU},
                 {"gelu_new", CI_ACT_GELU_TANH},
                 {"gelu_pytorch_tanh", CI_ACT_GELU_TANH},
                 {"gelu_fast", CI_ACT_GELU_TANH},
                 {"relu", CI_ACT_RELU}};
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(p->root, "hidden_act");
    const char *name = "silu";
    if (present(item)) {
        if (!cJSON_IsString(item))
            return CI_FAIL(CINFER_ERR_CONFIG, "%s: field 'hidden_act' must be a string", p->name);
        name = item->valuestring;
    }
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(name, known[i].name) == 0) {
            c->hidden_act = known[i].act;
            snprintf(c->hidden_act_name, sizeof c->hidden_act_name, "%s", name);
            return CINFER_OK;
        }
    }
    return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                   "%s: hidden_act = '%s' is not supported (expected silu, swish, gelu, gelu_new, "
                   "gelu_pytorch_tanh, gelu_fast or relu)",
                   p->name, name);
}

const char *ci_rope_type_name(ci_rope_type type) {
    static const char *names[] = {"default", "linear", "dynamic", "llama3", "yarn"};
    return names[type];
}

/* transformers 4.x writes rope_theta at the top level and the scaling in rope_scaling (type under
 * "type" or "rope_type"); 5.x writes everything into rope_parameters. rope_scaling wins when both
 * are present, as in transformers' own conversion. */
static cinfer_status read_rope(const parser *p, ci_config *c) {
    ci_rope_config *rope = &c->rope;
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(p->root, "rope_scaling");
    const char *scaling_field = "rope_scaling";
    if (!present(scaling)) {
        scaling = cJSON_GetObjectItemCaseSensitive(p->root, "rope_parameters");
        scaling_field = "rope_parameters";
    }
    if (present(scaling) && !cJSON_IsObject(scaling))
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: field '%s' must be an object or null", p->name,
                       scaling_field);
    if (!present(scaling)) scaling = NULL;

    double top_level_theta;
    CI_TRY(read_double(p, p->root, "rope_theta", false, 10000.0, &top_level_theta));
    rope->theta = top_level_theta;
    if (scaling)
        CI_TRY(read_double(p, scaling, "rope_theta", false, top_level_theta, &rope->theta));
    if (!(rope->theta > 1.0))
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: rope_theta must be greater than 1, got %g", p->name,
                       rope->theta);

    /* Llama rotates the whole head. transformers 4.x reads partial_rotary_factor from the top
     * level (any config key becomes an attribute), 5.x from rope_parameters. */
    const cJSON *partial_owner = p->root;
    const char *partial_prefix = "";
    if (scaling && present(cJSON_GetObjectItemCaseSensitive(scaling, "partial_rotary_factor"))) {
        partial_owner = scaling;
        partial_prefix = scaling_field;
    }
    double partial;
    CI_TRY(read_double(p, partial_owner, "partial_rotary_factor", false, 1.0, &partial));
    if (partial != 1.0)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: %s%spartial_rotary_factor = %g is not supported: Llama rotates the "
                       "whole head (expected 1.0)",
                       p->name, partial_prefix, partial_owner == scaling ? "." : "", partial);

    rope->type = CI_ROPE_DEFAULT;
    if (!scaling) return CINFER_OK;

    const cJSON *type = cJSON_GetObjectItemCaseSensitive(scaling, "rope_type");
    if (!present(type)) type = cJSON_GetObjectItemCaseSensitive(scaling, "type");
    const char *type_name = "default";
    if (present(type)) {
        if (!cJSON_IsString(type))
            return CI_FAIL(CINFER_ERR_CONFIG, "%s: %s.rope_type must be a string", p->name,
                           scaling_field);
        type_name = type->valuestring;
    }
    bool found = false;
    for (int t = CI_ROPE_DEFAULT; t <= CI_ROPE_YARN; t++) {
        if (strcmp(type_name, ci_rope_type_name((ci_rope_type)t)) == 0) {
            rope->type = (ci_rope_type)t;
            found = true;
        }
    }
    if (!found)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: %s.rope_type = '%s' is not supported (expected default, linear, "
                       "dynamic, llama3 or yarn)",
                       p->name, scaling_field, type_name);

    /* The pretraining length, for llama3 and yarn. transformers' standardize_rope_params lets a
     * top-level field (Phi-3 style configs) win over the rope object's, and falls back to
     * max_position_embeddings. */
    int original;
    const bool top_level =
        present(cJSON_GetObjectItemCaseSensitive(p->root, "original_max_position_embeddings"));
    CI_TRY(read_int(p, top_level ? p->root : scaling, "original_max_position_embeddings", false,
                    c->max_position_embeddings, 1, &original));

    switch (rope->type) {
    case CI_ROPE_DEFAULT: break;
    case CI_ROPE_LINEAR:
    case CI_ROPE_DYNAMIC:
        CI_TRY(read_double(p, scaling, "factor", true, 1.0, &rope->factor));
        break;
    case CI_ROPE_LLAMA3:
        CI_TRY(read_double(p, scaling, "factor", true, 1.0, &rope->factor));
        CI_TRY(read_double(p, scaling, "low_freq_factor", true, 1.0, &rope->low_freq_factor));
        CI_TRY(read_double(p, scaling, "high_freq_factor", true, 4.0, &rope->high_freq_factor));
        rope->original_max_position_embeddings = original;
        if (!(rope->high_freq_factor > rope->low_freq_factor))
            return CI_FAIL(CINFER_ERR_CONFIG,
                           "%s: %s.high_freq_factor (%g) must be greater than low_freq_factor (%g)",
                           p->name, scaling_field, rope->high_freq_factor, rope->low_freq_factor);
        break;
    case CI_ROPE_YARN: {
        rope->original_max_position_embeddings = original;
        /* The ratio stands in for a factor the config does not give. transformers 5.x takes it
         * only for an explicit "factor": null (it requires the key), 4.4x-4.5x whenever
         * original_max_position_embeddings was given; cinfer also takes an absent factor
         * (docs/MODEL_MATH.md, section 7). */
        double implicit =
            (double)c->max_position_embeddings / (double)rope->original_max_position_embeddings;
        CI_TRY(read_double(p, scaling, "factor", false, implicit, &rope->factor));
        CI_TRY(read_double(p, scaling, "attention_factor", false, -1.0, &rope->attention_factor));
        CI_TRY(read_double(p, scaling, "beta_fast", false, 32.0, &rope->beta_fast));
        CI_TRY(read_double(p, scaling, "beta_slow", false, 1.0, &rope->beta_slow));
        CI_TRY(read_double(p, scaling, "mscale", false, 0.0, &rope->mscale));
        CI_TRY(read_double(p, scaling, "mscale_all_dim", false, 0.0, &rope->mscale_all_dim));
        CI_TRY(read_bool(p, scaling, "truncate", true, &rope->truncate));
        break;
    }
    }
    if (rope->type != CI_ROPE_DEFAULT && !(rope->factor > 0.0))
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: %s.factor must be positive, got %g", p->name,
                       scaling_field, rope->factor);
    return CINFER_OK;
}

/* eos_token_id as config.json and generation_config.json write it: one id or a list
 * (null: none). */
static cinfer_status read_eos_token_ids(const parser *p, int ids[CI_MAX_EOS_TOKENS], int *n_ids) {
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(p->root, "eos_token_id");
    *n_ids = 0;
    if (cJSON_IsArray(eos)) {
        if (cJSON_GetArraySize(eos) > CI_MAX_EOS_TOKENS)
            return CI_FAIL(CINFER_ERR_CONFIG, "%s: field 'eos_token_id' lists more than %d tokens",
                           p->name, CI_MAX_EOS_TOKENS);
        for (const cJSON *id = eos->child; id; id = id->next) {
            if (!cJSON_IsNumber(id) || id->valuedouble < 0 ||
                id->valuedouble != floor(id->valuedouble) || id->valuedouble > INT_MAX)
                return CI_FAIL(CINFER_ERR_CONFIG,
                               "%s: field 'eos_token_id' must hold non-negative integers", p->name);
            ids[(*n_ids)++] = (int)id->valuedouble;
        }
    } else if (present(eos)) {
        CI_TRY(read_int(p, p->root, "eos_token_id", true, 0, 0, &ids[0]));
        *n_ids = 1;
    }
    return CINFER_OK;
}

static cinfer_status read_special_tokens(const parser *p, ci_config *c) {
    CI_TRY(read_int(p, p->root, "bos_token_id", false, -1, 0, &c->bos_token_id));
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(p->root, "bos_token_id");
    if (!bos) c->bos_token_id = 1; /* transformers' default when the field is absent */
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(p->root, "eos_token_id");
    c->n_eos = 0;
    if (!eos)
        c->eos_token_ids[c->n_eos++] = 2; /* transformers' default */
    else
        CI_TRY(read_eos_token_ids(p, c->eos_token_ids, &c->n_eos));
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] >= c->vocab_size)
            return CI_FAIL(CINFER_ERR_CONFIG,
                           "%s: eos_token_id %d is outside the vocabulary (vocab_size = %d)",
                           p->name, c->eos_token_ids[i], c->vocab_size);
    return CINFER_OK;
}

static cinfer_status check_consistency(const parser *p, ci_config *c) {
    if (c->n_heads % c->n_kv_heads != 0)
        return CI_FAIL(CINFER_ERR_CONFIG,
                       "%s: num_key_value_heads = %d does not divide num_attention_heads = %d",
                       p->name, c->n_kv_heads, c->n_heads);
    if (c->head_dim % 2 != 0)
        return CI_FAIL(CINFER_ERR_CONFIG,
                       "%s: head_dim = %d must be even (RoPE rotates pairs of halves)", p->name,
                       c->head_dim);
    if (c->rope.type == CI_ROPE_DYNAMIC && c->head_dim < 4)
        return CI_FAIL(CINFER_ERR_CONFIG,
                       "%s: dynamic RoPE needs head_dim >= 4 (its exponent is D/(D-2)), got %d",
                       p->name, c->head_dim);
    if (!isnan(c->rms_norm_eps) && !(c->rms_norm_eps > 0.0))
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: rms_norm_eps must be positive, got %g", p->name,
                       c->rms_norm_eps);
    /* Weight and cache sizes are computed in 64 bits, but per-row sizes must fit an int. */
    if ((int64_t)c->n_heads * c->head_dim > INT_MAX / 4)
        return CI_FAIL(CINFER_ERR_CONFIG, "%s: num_attention_heads * head_dim is too large",
                       p->name);
    return CINFER_OK;
}

cinfer_status config_json_parse(const char *name, const char *json, size_t length, ci_config *c) {
    memset(c, 0, sizeof *c);
    cJSON *root;
    CI_TRY(ci_json_parse(name, json, length, &root));
    parser p = {name, root};
    cinfer_status status = CINFER_OK;
    if (!cJSON_IsObject(root)) {
        status = CI_FAIL(CINFER_ERR_FORMAT, "%s: must be a JSON object", name);
        goto done;
    }
#define READ(call)                                                                                 \
    if ((status = (call)) != CINFER_OK) goto done
    READ(read_architecture(&p, c));
    READ(read_int(&p, root, "vocab_size", true, 0, 1, &c->vocab_size));
    READ(read_int(&p, root, "hidden_size", true, 0, 1, &c->hidden_size));
    READ(read_int(&p, root, "intermediate_size", true, 0, 1, &c->intermediate_size));
    READ(read_int(&p, root, "num_hidden_layers", true, 0, 1, &c->n_layers));
    READ(read_int(&p, root, "num_attention_heads", true, 0, 1, &c->n_heads));
    READ(read_int(&p, root, "num_key_value_heads", false, c->n_heads, 1, &c->n_kv_heads));
    /* transformers derives head_dim = hidden_size // num_attention_heads when it is absent. */
    READ(read_int(&p, root, "head_dim", false, c->hidden_size / c->n_heads, 1, &c->head_dim));
    if (c->head_dim < 2) {
        status = CI_FAIL(CINFER_ERR_CONFIG,
                         "%s: hidden_size = %d over num_attention_heads = %d leaves no head_dim",
                         name, c->hidden_size, c->n_heads);
        goto done;
    }
    READ(
        read_int(&p, root, "max_position_embeddings", false, 2048, 1, &c->max_position_embeddings));
    READ(read_double(&p, root, "rms_norm_eps", false, NAN, &c->rms_norm_eps));
    READ(read_activation(&p, c));
    READ(read_rope(&p, c));
    READ(read_bool(&p, root, "attention_bias", false, &c->attention_bias));
    READ(read_bool(&p, root, "mlp_bias", false, &c->mlp_bias));
    READ(read_bool(&p, root, "tie_word_embeddings", false, &c->tie_word_embeddings));
    READ(read_special_tokens(&p, c));
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (!cJSON_IsString(dtype)) dtype = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (cJSON_IsString(dtype))
        snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dtype->valuestring);
    READ(check_consistency(&p, c));
#undef READ
done:
    cJSON_Delete(root);
    return status;
}

cinfer_status config_json_load(const char *path, ci_config *config) {
    char *text;
    size_t length;
    CI_TRY(ci_read_file(path, CONFIG_MAX_BYTES, &text, &length));
    cinfer_status status = config_json_parse(path, text, length, config);
    free(text);
    return status;
}

cinfer_status config_load_generation_eos(const char *dir, int ids[CI_MAX_EOS_TOKENS], int *n_ids) {
    *n_ids = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    FILE *exists = fopen(path, "rb");
    if (!exists) return CINFER_OK; /* optional: most test checkpoints have none */
    fclose(exists);
    char *text;
    size_t length;
    cJSON *root;
    CI_TRY(ci_read_file(path, CONFIG_MAX_BYTES, &text, &length));
    cinfer_status status = ci_json_parse(path, text, length, &root);
    free(text);
    if (status != CINFER_OK) return status;
    const parser p = {path, root};
    status = cJSON_IsObject(root) ? read_eos_token_ids(&p, ids, n_ids)
                                  : CI_FAIL(CINFER_ERR_CONFIG, "%s: expected a JSON object", path);
    cJSON_Delete(root);
    return status;
}
