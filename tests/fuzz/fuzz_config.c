/* libFuzzer target for the config.json parser. Whatever the bytes, config_parse must either
 * refuse them with a message that names the file, or return a config that keeps every promise
 * the rest of the engine relies on; never crash, leak, or read past the length it was given.
 *
 *   mkdir -p /tmp/corpus && ./build-fuzz/fuzz_config -max_total_time=60 \
 *       -dict=tests/fuzz/config.dict /tmp/corpus tests/fuzz/corpus/config
 *
 * (built as fuzz_safetensors.c says; the seeds are the fixtures' config.json files) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../loaders/config.h"
#include "../../models/architecture.h"

static const char file_name[] = "fuzz/config.json";

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

static void check_config(const ci_config *c) {
    REQUIRE(memchr(c->architecture, '\0', sizeof c->architecture) != NULL);
    REQUIRE(c->vocab_size >= 1 && c->hidden_size >= 1 && c->intermediate_size >= 1);
    REQUIRE(c->n_layers >= 1 && c->n_heads >= 1 && c->n_kv_heads >= 1);
    REQUIRE(c->n_heads % c->n_kv_heads == 0);
    REQUIRE(c->head_dim >= 2 && c->head_dim % 2 == 0);
    REQUIRE(strcmp(c->architecture, "DiffLlamaForCausalLM") != 0 || c->n_heads % 2 == 0);
    REQUIRE(c->max_position_embeddings >= 1);
    REQUIRE(c->rms_norm_eps > 0.0);
    REQUIRE(c->rope.theta > 1.0);
    REQUIRE(c->rope.type == CI_ROPE_DEFAULT || c->rope.factor > 0.0);
    if (c->rope.type == CI_ROPE_LLAMA3 || c->rope.type == CI_ROPE_YARN)
        REQUIRE(c->rope.original_max_position_embeddings >= 1);
    if (c->rope.type == CI_ROPE_LLAMA3) REQUIRE(c->rope.high_freq_factor > c->rope.low_freq_factor);
    REQUIRE(ci_rope_type_name(c->rope.type) != NULL);
    REQUIRE(memchr(c->hidden_act_name, '\0', sizeof c->hidden_act_name) != NULL);
    REQUIRE(memchr(c->torch_dtype, '\0', sizeof c->torch_dtype) != NULL);
    REQUIRE(c->bos_token_id >= -1);
    REQUIRE(c->n_eos >= 0 && c->n_eos <= CI_MAX_EOS_TOKENS);
    for (int i = 0; i < c->n_eos; i++)
        REQUIRE(c->eos_token_ids[i] >= 0 && c->eos_token_ids[i] < c->vocab_size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ci_config config;
    cinfer_status status = config_parse(file_name, (const char *)data, size, &config);
    if (status == CINFER_OK)
        check_config(&config);
    else if (status != CINFER_ERR_MEMORY)
        REQUIRE(strncmp(cinfer_last_error(), file_name, sizeof file_name - 1) == 0);
    return 0;
}
