#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/error.h"
#include "json.h"
#include "read_file.h"

/* An index lists one line per tensor: a few MB even for the largest checkpoints. */
#define INDEX_MAX_BYTES (256u << 20)

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (path) snprintf(path, n, "%s/%s", dir, name);
    return path;
}

static int file_exists(const char *path) {
    struct stat info;
    return stat(path, &info) == 0;
}

const char *ci_base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int compare_tensor_pointers(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* Opens file_name once, however many tensors map to it; *out is the opened shard. */
static cinfer_status add_shard(ci_checkpoint *ck, const char *file_name, const st_file **out) {
    for (int i = 0; i < ck->n_shards; i++) {
        if (strcmp(ci_base_name(ck->shards[i]->path), file_name) == 0) {
            *out = ck->shards[i];
            return CINFER_OK;
        }
    }
    char *path = join_path(ck->dir, file_name);
    CI_CHECK_ALLOC(path, strlen(file_name));
    st_file *shard;
    cinfer_status status = st_open(path, &shard);
    free(path);
    CI_TRY(status);
    st_file **grown = realloc(ck->shards, (size_t)(ck->n_shards + 1) * sizeof *grown);
    if (!grown) {
        st_close(shard);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory opening shards");
    }
    ck->shards = grown;
    ck->shards[ck->n_shards++] = shard;
    *out = shard;
    return CINFER_OK;
}

/* A shard name must stay inside the checkpoint folder. */
static int is_plain_file_name(const char *name) {
    return name[0] != '\0' && name[0] != '/' && strstr(name, "..") == NULL;
}

/* model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor name: shard file}}.
 * Every shard it names is opened, and every tensor it maps must be in the shard it names. */
static cinfer_status open_sharded(ci_checkpoint *ck, const char *index_path) {
    char *text;
    size_t length;
    CI_TRY(ci_read_file(index_path, INDEX_MAX_BYTES, &text, &length));
    cJSON *root;
    cinfer_status parsed = ci_json_parse(index_path, text, length, &root);
    free(text);
    CI_TRY(parsed);
    const char *index_name = ci_base_name(index_path);
    cinfer_status status = CINFER_OK;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map) || !map->child) {
        status = CI_FAIL(CINFER_ERR_FORMAT,
                         "%s: field 'weight_map' must be a non-empty object mapping tensor names "
                         "to shard files",
                         index_path);
        goto done;
    }
    for (const cJSON *entry = map->child; entry && status == CINFER_OK; entry = entry->next) {
        if (!cJSON_IsString(entry) || !is_plain_file_name(entry->valuestring)) {
            status = CI_FAIL(CINFER_ERR_FORMAT,
                             "%s: weight_map['%s'] must be the name of "
                             "a file in the checkpoint folder",
                             index_path, entry->string);
            break;
        }
        const st_file *shard;
        status = add_shard(ck, entry->valuestring, &shard);
        if (status != CINFER_OK)
            ci_error_prefix("%s names a shard that cannot be used: ", index_name);
        else if (!st_find(shard, entry->string))
            status = CI_FAIL(CINFER_ERR_WEIGHTS,
                             "%s: tensor '%s' is mapped to %s, which does not contain it",
                             index_path, entry->string, entry->valuestring);
    }
    if (status != CINFER_OK) goto done;
    size_t needed = strlen(index_name) + 32;
    ck->weights_description = malloc(needed);
    if (ck->weights_description)
        snprintf(ck->weights_description, needed, "%s (%d shards)", index_name, ck->n_shards);
done:
    cJSON_Delete(root);
    return status;
}

/* The lookup table over all shards. A tensor in two shards is ambiguous and refused. */
static cinfer_status build_index(ci_checkpoint *ck) {
    int total = 0;
    for (int i = 0; i < ck->n_shards; i++) total += ck->shards[i]->n_tensors;
    ck->index = malloc(((size_t)total + 1) * sizeof *ck->index);
    CI_CHECK_ALLOC(ck->index, (size_t)total * sizeof *ck->index);
    for (int i = 0; i < ck->n_shards; i++)
        for (int j = 0; j < ck->shards[i]->n_tensors; j++)
            ck->index[ck->n_index++] = &ck->shards[i]->tensors[j];
    qsort(ck->index, (size_t)ck->n_index, sizeof *ck->index, compare_tensor_pointers);
    for (int i = 1; i < ck->n_index; i++)
        if (strcmp(ck->index[i - 1]->name, ck->index[i]->name) == 0)
            return CI_FAIL(CINFER_ERR_WEIGHTS, "%s: tensor '%s' is in both %s and %s", ck->dir,
                           ck->index[i]->name, ci_base_name(ck->index[i - 1]->file->path),
                           ci_base_name(ck->index[i]->file->path));
    return CINFER_OK;
}

static cinfer_status open_folder(ci_checkpoint *ck) {
    struct stat info;
    if (stat(ck->dir, &info) != 0 || !S_ISDIR(info.st_mode))
        return CI_FAIL(CINFER_ERR_IO, "%s: not a checkpoint folder (no such directory)", ck->dir);
    ck->config_path = join_path(ck->dir, "config.json");
    CI_CHECK_ALLOC(ck->config_path, strlen(ck->dir));
    CI_TRY(config_json_load(ck->config_path, &ck->config));

    char *single = join_path(ck->dir, "model.safetensors");
    char *index = join_path(ck->dir, "model.safetensors.index.json");
    cinfer_status status = CINFER_OK;
    if (!single || !index) {
        status = CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    } else if (file_exists(index)) {
        status = open_sharded(ck, index);
    } else if (file_exists(single)) {
        const st_file *shard;
        status = add_shard(ck, "model.safetensors", &shard);
        ck->weights_description = strdup("model.safetensors");
    } else {
        char *bin = join_path(ck->dir, "pytorch_model.bin");
        int has_bin = bin && file_exists(bin);
        free(bin);
        status = CI_FAIL(CINFER_ERR_IO,
                         "%s: no model.safetensors or model.safetensors.index.json%s", ck->dir,
                         has_bin ? " (pytorch_model.bin is not read: "
                                   "convert the checkpoint to safetensors)"
                                 : "");
    }
    free(single);
    free(index);
    CI_TRY(status);
    return build_index(ck);
}

cinfer_status checkpoint_open(const char *dir, ci_checkpoint **out) {
    *out = NULL;
    ci_checkpoint *ck = calloc(1, sizeof *ck);
    CI_CHECK_ALLOC(ck, sizeof *ck);
    ck->dir = strdup(dir);
    if (!ck->dir) {
        free(ck);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    }
    cinfer_status status = open_folder(ck);
    if (status != CINFER_OK) {
        checkpoint_close(ck);
        return status;
    }
    *out = ck;
    return CINFER_OK;
}

cinfer_status checkpoint_synthetic(const char *config_path, uint64_t seed, ci_checkpoint **out) {
    *out = NULL;
    ci_checkpoint *ck = calloc(1, sizeof *ck);
    CI_CHECK_ALLOC(ck, sizeof *ck);
    ck->synthetic = 1;
    ck->seed = seed;
    ck->config_path = strdup(config_path);
    ck->dir = strdup(config_path);
    ck->weights_description = strdup("random weights");
    if (!ck->config_path || !ck->dir || !ck->weights_description) {
        checkpoint_close(ck);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    }
    cinfer_status status = config_json_load(config_path, &ck->config);
    if (status != CINFER_OK) {
        checkpoint_close(ck);
        return status;
    }
    *out = ck;
    return CINFER_OK;
}

void checkpoint_close(ci_checkpoint *ck) {
    if (!ck) return;
    for (int i = 0; i < ck->n_shards; i++) st_close(ck->shards[i]);
    free(ck->shards);
    free(ck->index);
    free(ck->weights_description);
    free(ck->config_path);
    free(ck->dir);
    free(ck);
}

const st_tensor *checkpoint_find(const ci_checkpoint *ck, const char *name) {
    st_tensor key = {.name = name};
    const st_tensor *key_pointer = &key;
    const st_tensor **found = bsearch(&key_pointer, ck->index, (size_t)ck->n_index,
                                      sizeof *ck->index, compare_tensor_pointers);
    return found ? *found : NULL;
}

int checkpoint_index_of(const ci_checkpoint *ck, const st_tensor *tensor) {
    const st_tensor **found = bsearch(&tensor, ck->index, (size_t)ck->n_index, sizeof *ck->index,
                                      compare_tensor_pointers);
    return found ? (int)(found - ck->index) : -1;
}
