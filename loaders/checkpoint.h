/* A Hugging Face checkpoint folder: config.json plus either model.safetensors or the shards
 * that model.safetensors.index.json names. Every shard is memory-mapped and validated when the
 * folder is opened, so that a missing or corrupt shard is reported before any work starts. */
#ifndef CINFER_CHECKPOINT_H
#define CINFER_CHECKPOINT_H

#include "config.h"
#include "safetensors.h"

typedef struct ci_checkpoint {
    char *dir;
    char *config_path;
    ci_config config;
    st_file **shards;
    int n_shards;
    /* name -> tensor over all shards, sorted by name */
    const st_tensor **index;
    int n_index;
    char
        *weights_description; /* "model.safetensors" or "model.safetensors.index.json (3 shards)" */
    /* No files: a config alone, whose weights the model makes up (random weights of a shape,
     * for benchmarks). checkpoint_find finds nothing; models/weights.c generates each tensor. */
    int synthetic;
    uint64_t seed;
} ci_checkpoint;

cinfer_status checkpoint_open(const char *dir, ci_checkpoint **out);
/* A checkpoint of random weights drawn from `seed` for the model config_path describes. */
cinfer_status checkpoint_synthetic(const char *config_path, uint64_t seed, ci_checkpoint **out);
void checkpoint_close(ci_checkpoint *checkpoint);

/* NULL when no shard holds the tensor. */
const st_tensor *checkpoint_find(const ci_checkpoint *checkpoint, const char *name);

/* Position of a tensor of this checkpoint in its index (for per-tensor bookkeeping). */
int checkpoint_index_of(const ci_checkpoint *checkpoint, const st_tensor *tensor);

/* The file name without its folder, for messages. */
const char *ci_base_name(const char *path);

#endif
