/* libFuzzer target for the safetensors reader. Whatever the bytes, st_parse must either refuse
 * them with a message that names the file, or return tensors that tile the data buffer exactly
 * and lie inside the input; never crash, leak, or read outside the input.
 *
 *   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCINFER_FUZZ=ON -DCINFER_CUDA=OFF \
 *       -DCINFER_TESTS=OFF && cmake --build build-fuzz
 *   mkdir -p /tmp/corpus && ./build-fuzz/fuzz_safetensors -max_total_time=60 \
 *       -dict=tests/fuzz/safetensors.dict /tmp/corpus tests/fuzz/corpus/safetensors
 *
 * libFuzzer adds the inputs it finds to the first folder: a scratch one keeps the committed seeds
 * small. A crash is saved as crash-<hash>; rerun it with ./build-fuzz/fuzz_safetensors FILE. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../loaders/safetensors.h"

static const char file_name[] = "fuzz.safetensors";

/* A promise of the reader; a broken one aborts, which libFuzzer records as a crash. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

static void check_refusal(cinfer_status status, const st_file *out) {
    REQUIRE(out == NULL);
    /* Only an allocation failure may lack the file name: it is not about the file. */
    if (status != CINFER_ERR_MEMORY)
        REQUIRE(strncmp(cinfer_last_error(), file_name, sizeof file_name - 1) == 0);
}

static void check_file(const st_file *file, const uint8_t *data, size_t size) {
    REQUIRE(file->data + file->data_size == data + size);
    uint64_t covered = 0;
    for (int i = 0; i < file->n_tensors; i++) {
        const st_tensor *t = &file->tensors[i];
        REQUIRE(i == 0 || strcmp(file->tensors[i - 1].name, t->name) < 0); /* sorted, unique */
        REQUIRE(st_find(file, t->name) == t);
        REQUIRE(t->n_dims >= 0 && t->n_dims <= ST_MAX_DIMS);
        REQUIRE(t->begin <= t->end && t->end <= file->data_size);
        REQUIRE((const uint8_t *)t->data == file->data + t->begin);
        REQUIRE((uint64_t)st_tensor_numel(t) * ci_dtype_size(t->dtype) == t->end - t->begin);
        if (t->end > t->begin) {
            /* Touch both ends, so that AddressSanitizer checks they lie inside the input. */
            volatile uint8_t ends = ((const uint8_t *)t->data)[0];
            ends = ((const uint8_t *)t->data)[t->end - t->begin - 1];
            (void)ends;
        }
        covered += t->end - t->begin;
    }
    REQUIRE(covered == file->data_size); /* no gap, no overlap, nothing after the last tensor */
    for (int i = 0; i < file->n_metadata; i++)
        REQUIRE(st_metadata(file, file->metadata[2 * i]) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file *file = NULL;
    cinfer_status status = st_parse(file_name, data, size, &file);
    if (status != CINFER_OK) {
        check_refusal(status, file);
        return 0;
    }
    check_file(file, data, size);
    st_close(file);
    return 0;
}
