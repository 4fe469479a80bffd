/* config.json of a Hugging Face Llama-family checkpoint, read with cJSON and checked for
 * consistency before any weight is touched: the fields every Llama-family config has, with
 * transformers' defaults (LlamaConfig); both the 4.x layout (rope_theta + rope_scaling) and the
 * 5.x layout (rope_parameters) are read. What depends on the architecture (which ones run, their
 * own defaults and checks) is its descriptor's, in models/: config_load and config_parse there
 * (models/architecture.h) read a config completely. */
#ifndef CINFER_CONFIG_H
#define CINFER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/model_config.h"
#include "../include/cinfer.h"

/* Reads and validates path (a config.json). Messages start with the path. The architecture is
 * recorded as written, not resolved, and rms_norm_eps stays NaN when absent. */
cinfer_status config_json_load(const char *path, ci_config *config);
/* eos_token_id of dir/generation_config.json (chat checkpoints list their end-of-turn tokens
 * there); *n_ids = 0 when the file does not exist. */
cinfer_status config_load_generation_eos(const char *dir, int ids[CI_MAX_EOS_TOKENS], int *n_ids);
/* The same from JSON text in memory; name is used in messages. */
cinfer_status config_json_parse(const char *name, const char *json, size_t length,
                                ci_config *config);

const char *ci_rope_type_name(ci_rope_type type);

#endif
