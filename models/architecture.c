/* The registry of architectures: every descriptor cinfer runs, one line each. Configs find theirs
 * here by class name or model_type. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../common/error.h"
#include "../loaders/config.h"
#include "architecture.h"
#include "model.h"

static const ci_architecture *const architectures[] = {
    &ci_llama_architecture,     /* models/llama.c */
    &ci_diffllama_architecture, /* models/diffllama.c */
};
enum { N_ARCHITECTURES = sizeof architectures / sizeof architectures[0] };

/* "A, B or C" of each architecture's field, for messages. */
static const char *list_names(int model_types, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_ARCHITECTURES && used < size; i++) {
        const char *sep = i == 0 ? "" : i == N_ARCHITECTURES - 1 ? " or " : ", ";
        const char *quote = model_types ? "'" : "";
        const char *name =
            model_types ? architectures[i]->model_type : architectures[i]->class_name;
        used += (size_t)snprintf(buf + used, size - used, "%s%s%s%s", sep, quote, name, quote);
    }
    return buf;
}

static const ci_architecture *find(const ci_config *c) {
    for (int i = 0; i < N_ARCHITECTURES; i++) {
        const ci_architecture *a = architectures[i];
        if (c->architecture[0] ? strcmp(c->architecture, a->class_name) == 0
                               : strcmp(c->model_type, a->model_type) == 0)
            return a;
    }
    return NULL;
}

cinfer_status ci_architecture_configure(const char *path, ci_config *c,
                                        const ci_architecture **out) {
    const ci_architecture *arch = find(c);
    char names[256];
    if (!arch && c->architecture[0])
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: architectures[0] = '%s' is not supported (expected %s)", path,
                       c->architecture, list_names(0, names, sizeof names));
    if (!arch)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: model_type = '%s' is not supported (expected %s)", path, c->model_type,
                       list_names(1, names, sizeof names));
    snprintf(c->architecture, sizeof c->architecture, "%s", arch->class_name);
    if (isnan(c->rms_norm_eps)) c->rms_norm_eps = arch->rms_norm_eps;
    if (arch->check_config) CI_TRY(arch->check_config(path, c));
    if (out) *out = arch;
    return CINFER_OK;
}

cinfer_status config_load(const char *path, ci_config *config) {
    CI_TRY(config_json_load(path, config));
    return ci_architecture_configure(path, config, NULL);
}

cinfer_status config_parse(const char *name, const char *json, size_t length, ci_config *config) {
    CI_TRY(config_json_parse(name, json, length, config));
    return ci_architecture_configure(name, config, NULL);
}
