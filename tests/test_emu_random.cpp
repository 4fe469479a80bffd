// The device's random-weight fill (kernels/cuda/random_fill.cuh), run on the CPU under the CUDA
// emulator, against the host draw (models/weights.c): bit for bit, for every dtype the files may
// hold and every dtype the device stores. Also the binding that hands a random model's tensors to
// the device (models/weights.c, model->device_draws), which without a GPU runs nowhere else.
#include "tests/cuda_emu/cuda_emu.h"

#include "kernels/cuda/random_fill.cuh"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "models/model.h"
}

using namespace cinfer_test;

namespace {

const ci_dtype WEIGHT_DTYPES[] = {CI_F32, CI_BF16, CI_F16};

// What the upload makes of one host value: rounded to the file's dtype by the host draw, widened
// exactly, rounded to the device's dtype by the upload's convert kernel. Both roundings are to
// nearest even; the host functions of common/tensor.c are the reference.
uint32_t expected_bits(float value, ci_dtype file_dtype, ci_dtype device_dtype) {
    float stored = value;
    if (file_dtype == CI_BF16) stored = ci_bf16_to_f32(ci_f32_to_bf16(value));
    if (file_dtype == CI_F16) stored = ci_f16_to_f32(ci_f32_to_f16(value));
    if (device_dtype == CI_BF16) return ci_f32_to_bf16(stored);
    if (device_dtype == CI_F16) return ci_f32_to_f16(stored);
    uint32_t bits;
    std::memcpy(&bits, &stored, sizeof bits);
    return bits;
}

// Element i of a device buffer of `dtype`, as bits.
uint32_t bits_at(const std::vector<unsigned char> &buffer, ci_dtype dtype, int64_t i) {
    if (dtype == CI_F32) {
        uint32_t bits;
        std::memcpy(&bits, &buffer[(size_t)i * 4], 4);
        return bits;
    }
    uint16_t bits;
    std::memcpy(&bits, &buffer[(size_t)i * 2], 2);
    return bits;
}

// Counts the elements of `buffer` that are not what the host draw, uploaded, would give.
int64_t count_mismatches(const std::vector<unsigned char> &buffer, const ci_random_draw &draw,
                         ci_dtype file_dtype, ci_dtype device_dtype, int64_t n, int64_t *first) {
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint32_t want =
            expected_bits(ci_random_value(&draw, (uint64_t)i), file_dtype, device_dtype);
        if (bits_at(buffer, device_dtype, i) != want && differ++ == 0) *first = i;
    }
    return differ;
}

// Every pair of dtypes, for the kinds of tensor a model has (uniform with both standard
// deviations, norm weights, biases), at a length that is no multiple of the block.
TEST(EmuRandomFill, EqualsTheHostDrawInEveryDtype) {
    const uint64_t seed = fresh_seed();
    const char *names[] = {"model.layers.3.self_attn.q_proj.weight", // std 0.02
                           "model.layers.0.self_attn.lambda_k2",     // std 0.1
                           "model.layers.1.input_layernorm.weight",  // 1
                           "model.layers.2.mlp.down_proj.bias"};     // 0
    const int64_t n = 1000;
    for (const char *name : names)
        for (ci_dtype file : WEIGHT_DTYPES)
            for (ci_dtype device : WEIGHT_DTYPES) {
                const ci_random_draw draw = ci_random_draw_of(seed, name);
                // pre-filled with a pattern no draw gives, so that a skipped element shows
                std::vector<unsigned char> buffer((size_t)(n + 1) * ci_dtype_size(device), 0xA5);
                ASSERT_EQ(random_fill(buffer.data(), device, file, draw, n, nullptr), 0);
                int64_t first = -1;
                EXPECT_EQ(count_mismatches(buffer, draw, file, device, n, &first), 0)
                    << name << ", files " << ci_dtype_name(file) << ", device "
                    << ci_dtype_name(device) << ": first at " << first;
                EXPECT_EQ(buffer.back(), 0xA5) << "wrote past the end";
            }
    std::vector<unsigned char> unused(4, 0xA5);
    EXPECT_EQ(
        random_fill(unused.data(), CI_I32, CI_F32, ci_random_draw_of(seed, names[0]), 1, nullptr),
        -1)
        << "only F32, BF16 and F16 are filled";
}

// A grid smaller than the tensor loops over it (large tensors are filled by at most
// RANDOM_FILL_MAX_BLOCKS blocks): 2 blocks of 64 threads cover 1000 elements, each once.
TEST(EmuRandomFill, ASmallGridStridesOverTheWholeTensor) {
    const ci_random_draw draw =
        ci_random_draw_of(fresh_seed(), "model.layers.0.mlp.gate_proj.weight");
    const int64_t n = 1000;
    std::vector<unsigned char> buffer((size_t)n * 2, 0xA5);
    CI_LAUNCH((random_fill_kernel<__nv_bfloat16, __half>), 2, 64, 0, nullptr,
              reinterpret_cast<__half *>(buffer.data()), draw, n);
    int64_t first = -1;
    EXPECT_EQ(count_mismatches(buffer, draw, CI_BF16, CI_F16, n, &first), 0)
        << "first at " << first;
}

// A random model bound for CUDA: binding draws nothing on the host for the tensors the device
// holds; it records them, and the fill, given those records, produces exactly the upload of the
// model the CPU draws from the same seed. This is ci_cuda_upload_weights' loop without the GPU.
class EmuRandomModel : public ::testing::TestWithParam<std::tuple<std::string, ci_dtype>> {};

TEST_P(EmuRandomModel, TheDeviceDrawsEqualTheUploadOfTheHostDraw) {
    const std::string config = fixture_dir(std::get<0>(GetParam())) + "/config.json";
    const ci_dtype run = std::get<1>(GetParam());
    const uint64_t seed = fresh_seed();

    cinfer_model *host = nullptr;
    ASSERT_EQ(cinfer_model_load_random(config.c_str(), nullptr, seed, &host), CINFER_OK)
        << cinfer_last_error();

    // what engine/model.c's load_from does for a CUDA model, up to the upload
    ci_checkpoint *checkpoint = nullptr;
    ASSERT_EQ(checkpoint_synthetic(config.c_str(), seed, &checkpoint), CINFER_OK);
    cinfer_model *m = static_cast<cinfer_model *>(calloc(1, sizeof(cinfer_model)));
    m->options.backend = CINFER_BACKEND_CUDA;
    m->checkpoint = checkpoint;
    m->config = &checkpoint->config;
    ASSERT_EQ(ci_architecture_configure(checkpoint->config_path, &checkpoint->config, &m->arch),
              CINFER_OK);
    // a whole model's plan (tp 1), as load_from makes one for every model
    ASSERT_EQ(ci_shard_plan_make(m->config, m->arch->differential, 0, 1, &m->shard), CINFER_OK);
    ASSERT_EQ(ci_bind_model_weights(m), CINFER_OK) << cinfer_last_error();
    ASSERT_NE(m->device_draws, nullptr);

    // the model's own tensor in `host` that a pending draw of `m` stands for
    auto host_tensor = [&](const ci_tensor *t) -> const ci_tensor * {
        if (t == &m->embed_tokens) return &host->embed_tokens;
        if (t == &m->norm) return &host->norm;
        if (t == &m->lm_head) return &host->lm_head;
        const size_t offset = (size_t)((const char *)t - (const char *)m->layers);
        EXPECT_LT(offset, m->config->n_layers * sizeof(ci_layer));
        return (const ci_tensor *)((const char *)host->layers + offset);
    };

    int expected_draws = m->config->tie_word_embeddings ? 2 : 3;
    for (int l = 0; l < m->config->n_layers; l++) {
        const ci_layer &layer = m->layers[l];
        for (const ci_tensor *t : {&layer.q_bias, &layer.k_bias, &layer.v_bias, &layer.o_bias,
                                   &layer.gate_bias, &layer.up_bias, &layer.down_bias})
            expected_draws += t->data != nullptr;
        expected_draws += 9; // 2 norms, 7 matrices
        // the lambdas were read while binding: drawn on the host, as the CPU model's
        EXPECT_EQ(layer.lambda, host->layers[l].lambda) << "layer " << l;
    }
    EXPECT_EQ(m->n_device_draws, expected_draws);

    for (int i = 0; i < m->n_device_draws; i++) {
        const ci_device_draw &d = m->device_draws[i];
        const ci_tensor *t = d.tensor, *h = host_tensor(t);
        ASSERT_EQ(t->data, &d) << "a pending tensor points at its draw";
        ASSERT_EQ(t->dtype, h->dtype) << "pending tensors keep the files' dtype";
        const int64_t n = ci_tensor_numel(t);
        ASSERT_EQ(n, ci_tensor_numel(h));
        const ci_dtype device = t->n_dims == 2 ? run : CI_F32; // as weights_cuda.cu stores them
        std::vector<unsigned char> buffer((size_t)n * ci_dtype_size(device), 0xA5);
        ASSERT_EQ(random_fill(buffer.data(), device, t->dtype, d.draw, n, nullptr), 0);
        int64_t differ = 0, first = -1;
        for (int64_t e = 0; e < n; e++)
            if (bits_at(buffer, device, e) !=
                    expected_bits(ci_tensor_get_f32(h, e), h->dtype, device) &&
                differ++ == 0)
                first = e;
        EXPECT_EQ(differ, 0) << "tensor " << i << " [" << t->shape[0] << ", ...]: " << differ
                             << " of " << n << " differ from the host draw, first at " << first;
    }
    // nothing reached the device, so there is nothing to free there
    cinfer_model_free(m);
    cinfer_model_free(host);
}

std::string param_name(const ::testing::TestParamInfo<EmuRandomModel::ParamType> &info) {
    return std::get<0>(info.param) + "_" + ci_dtype_name(std::get<1>(info.param));
}

// biases, tied embeddings and lambdas in f32 files; a bf16 and an fp16 checkpoint's config
INSTANTIATE_TEST_SUITE_P(Fixtures, EmuRandomModel,
                         ::testing::Combine(::testing::Values("diffllama_gqa4", "llama_gqa_llama3",
                                                              "llama_bf16_sharded",
                                                              "diffllama_fp16"),
                                            ::testing::ValuesIn(WEIGHT_DTYPES)),
                         param_name);

} // namespace
