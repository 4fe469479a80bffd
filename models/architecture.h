/* What an architecture is to cinfer: one descriptor per architecture, in its model file
 * (models/llama.c, models/diffllama.c), found through the one registry in models/architecture.c.
 * A new architecture is its file plus one line there (docs/ADDING_A_MODEL.md). */
#ifndef CINFER_ARCHITECTURE_H
#define CINFER_ARCHITECTURE_H

#include <stddef.h>

#include "../include/cinfer.h"
#include "../kernels/backend.h"
#include "../loaders/config.h"

struct cinfer_model;
struct ci_forward_step;

typedef struct ci_architecture {
    const char *class_name; /* the Hugging Face class: config.json's architectures[0] */
    const char *model_type; /* config.json's model_type, for configs without architectures */
    double rms_norm_eps;    /* its Config class's default, when config.json has none */
    /* Its own config rules, after the checks every Llama-family config passes (loaders/config.c):
     * fields it forces, shapes it needs. Messages start with path. NULL: none. */
    cinfer_status (*check_config)(const char *path, ci_config *config);
    /* Binds the tensors layer `layer` has beyond the Llama layout (models/weights.c) and derives
     * its constants. NULL: none. */
    cinfer_status (*bind_layer_extras)(struct cinfer_model *model, int layer);
    /* 1 when its attention is the differential op: which kernels the backend must offer. */
    int differential;
    /* The attention core: out from q (rows as the step lays them out, models/model.h) over the
     * layer's caches, at the step's positions: lockstep or a ragged step over a paged pool. */
    void (*attention)(ci_backend *be, const struct cinfer_model *model, int layer, ci_tensor *out,
                      const ci_tensor *q, const ci_tensor *k_cache, const ci_tensor *v_cache,
                      const struct ci_forward_step *step);
} ci_architecture;

/* The architecture config names (architectures[0], else model_type), with its defaults applied
 * and its rules checked; CINFER_ERR_UNSUPPORTED naming the field and the architectures cinfer
 * runs when none matches. config->architecture becomes the class name. path is for messages. */
cinfer_status ci_architecture_configure(const char *path, ci_config *config,
                                        const ci_architecture **out);

/* config.json read completely: every field (loaders/config.c), then ci_architecture_configure. */
cinfer_status config_load(const char *path, ci_config *config);
cinfer_status config_parse(const char *name, const char *json, size_t length, ci_config *config);

#endif
