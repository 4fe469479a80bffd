// The NCCL communicator (kernels/cuda/comm_nccl.cu) and tensor-parallel ranks on GPUs, one thread
// per GPU: the collectives against the CPU communicator's results on fresh random data, and a
// sharded model's greedy tokens against the whole model on the CPU.
//
// NCCL sums in its own order (ring or tree), so its all-reduce is held to the rank-order sum within
// a few F32 roundings rather than bit for bit. Every test skips, visibly, without NCCL in the build
// or without enough CUDA devices (NCCL refuses two ranks on one device).
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

extern "C" {
#include "engine/model_shard.h"
#include "kernels/backend.h"
#include "kernels/comm.h"
#include "kernels/device.h"
}

using namespace cinfer_test;

namespace {

// Why the test cannot run here, or "" when it can with `ranks` GPUs.
std::string missing(int ranks) {
    if (!ci_comm_nccl_compiled()) return "this build has no NCCL communicator (CINFER_NCCL)";
    if (ci_backend_available(CINFER_BACKEND_CUDA) != CINFER_OK) return cinfer_last_error();
    const int devices = ci_cuda_devices(nullptr, 0);
    if (devices < ranks)
        return std::to_string(devices) + " CUDA device(s); the test needs " + std::to_string(ranks);
    return "";
}

int gpu_ranks() { return std::max(1, std::min(4, ci_cuda_devices(nullptr, 0))); }

// tp ranks, one per GPU, each a thread with its NCCL communicator and CUDA backend.
void run_on_gpus(int tp, const std::function<void(int, ci_comm *, ci_backend *)> &body) {
    ci_comm_id id;
    ASSERT_EQ(ci_comm_nccl_unique_id(&id), CINFER_OK) << cinfer_last_error();
    std::vector<std::thread> threads;
    for (int r = 0; r < tp; r++)
        threads.emplace_back([&, r] {
            cinfer_load_options options{};
            options.backend = CINFER_BACKEND_CUDA;
            options.device = r;
            ci_backend *be = nullptr;
            ci_comm *comm = nullptr;
            // every rank must join, or ncclCommInitRank waits for it
            const cinfer_status joined = ci_comm_nccl_create(&id, r, tp, r, &comm);
            if (joined == CINFER_OK && ci_backend_create_for(&options, &be) == CINFER_OK)
                body(r, comm, be);
            else
                ADD_FAILURE() << "rank " << r << ": " << cinfer_last_error();
            ci_comm_destroy(comm);
            ci_backend_free(be);
        });
    for (auto &thread : threads) thread.join();
}

TEST(NcclComm, AllReduceAllGatherAndBroadcastOnEveryGpu) {
    const int tp = gpu_ranks();
    const std::string why = missing(tp);
    if (!why.empty()) GTEST_SKIP() << why;
    std::mt19937_64 rng(fresh_seed());
    const int64_t n = 4099, rows = 3, cols = 517;
    std::vector<std::vector<float>> x(tp), part(tp);
    for (int r = 0; r < tp; r++) {
        x[r] = random_floats(rng, (size_t)n);
        part[r] = random_floats(rng, (size_t)(rows * cols));
    }
    std::vector<std::vector<float>> summed(tp), gathered(tp), broadcast(tp);
    run_on_gpus(tp, [&](int r, ci_comm *comm, ci_backend *be) {
        auto upload = [&](const std::vector<float> &host) {
            void *device = be->ops->alloc(be, host.size() * sizeof(float));
            be->ops->to_device(be, device, host.data(), host.size() * sizeof(float));
            return device;
        };
        auto download = [&](void *device, size_t count) {
            std::vector<float> host(count);
            be->ops->to_host(be, host.data(), device, count * sizeof(float));
            return host;
        };
        ci_tensor t = {upload(x[r]), CI_F32, 1, {n}};
        EXPECT_EQ(ci_all_reduce_sum(comm, be, &t), CINFER_OK) << cinfer_last_error();
        EXPECT_EQ(ci_comm_synchronize(comm, be, 60.0), CINFER_OK) << cinfer_last_error();
        summed[r] = download(t.data, (size_t)n);

        ci_tensor p = {
            ci_comm_gather_buffer(comm, part[r].size() * sizeof(float)), CI_F32, 2, {rows, cols}};
        be->ops->to_device(be, p.data, part[r].data(), part[r].size() * sizeof(float));
        ci_tensor all = {be->ops->alloc(be, (size_t)(rows * cols * tp) * sizeof(float)),
                         CI_F32,
                         2,
                         {rows, cols * tp}};
        EXPECT_EQ(ci_all_gather_columns(comm, be, &all, &p), CINFER_OK) << cinfer_last_error();
        gathered[r] = download(all.data, (size_t)(rows * cols * tp));

        EXPECT_EQ(ci_broadcast(comm, be, t.data, (size_t)n * sizeof(float), tp - 1), CINFER_OK);
        EXPECT_EQ(ci_comm_barrier(comm, be), CINFER_OK) << cinfer_last_error();
        broadcast[r] = download(t.data, (size_t)n);
        be->ops->free(be, t.data);
        be->ops->free(be, all.data);
    });
    for (int r = 0; r < tp; r++) {
        for (int64_t i = 0; i < n; i++) {
            float want = x[0][i], magnitude = std::fabs(x[0][i]);
            for (int q = 1; q < tp; q++) want += x[q][i], magnitude += std::fabs(x[q][i]);
            ASSERT_NEAR(summed[r][i], want, 4 * tp * 6e-8 * magnitude) << "rank " << r << ", " << i;
        }
        for (int q = 0; q < tp; q++)
            for (int64_t t = 0; t < rows; t++)
                for (int64_t j = 0; j < cols; j++)
                    ASSERT_EQ(gathered[r][(size_t)(t * cols * tp + q * cols + j)],
                              part[q][(size_t)(t * cols + j)]);
        EXPECT_EQ(broadcast[r], summed[tp - 1]) << "rank " << r;
    }
}

// Each GPU holds its rank's slices (uploaded from the mapped checkpoint) and runs a plain session
// in lockstep with the others: the greedy tokens of the whole model on the CPU.
TEST(NcclComm, ShardedModelsOnGpusGiveTheCpuModelsGreedyTokens) {
    const int tp = 2;
    const std::string why = missing(tp);
    if (!why.empty()) GTEST_SKIP() << why;
    const std::string dir = fixture_dir("llama_gqa_llama3");
    const std::vector<int32_t> prompt = {1, 5, 9, 14, 2, 7};
    cinfer_generate_params params = {};
    params.max_new_tokens = 8;
    params.ignore_eos = 1;
    auto collect = [](void *user, int32_t token) {
        static_cast<std::vector<int32_t> *>(user)->push_back(token);
        return 0;
    };
    auto generate = [&](cinfer_model *m, std::vector<int32_t> *ids) {
        cinfer_session *session = nullptr;
        ASSERT_EQ(cinfer_session_create(m, 32, &session), CINFER_OK) << cinfer_last_error();
        cinfer_generate_stats stats;
        EXPECT_EQ(cinfer_generate(session, prompt.data(), (int)prompt.size(), &params, collect, ids,
                                  nullptr, &stats),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
    };
    cinfer_model *whole = nullptr;
    ASSERT_EQ(cinfer_model_load(dir.c_str(), nullptr, &whole), CINFER_OK);
    std::vector<int32_t> want;
    generate(whole, &want);
    cinfer_model_free(whole);
    std::vector<std::vector<int32_t>> got(tp);
    run_on_gpus(tp, [&](int r, ci_comm *comm, ci_backend *) {
        cinfer_load_options options{};
        options.backend = CINFER_BACKEND_CUDA;
        options.dtype = CINFER_DTYPE_F32;
        options.device = r;
        cinfer_model *m = nullptr;
        if (ci_model_load_shard(dir.c_str(), &options, comm, &m) != CINFER_OK) {
            ADD_FAILURE() << "rank " << r << ": " << cinfer_last_error();
            ci_comm_abort(comm, "its model did not load");
            return;
        }
        generate(m, &got[r]);
        cinfer_model_free(m);
    });
    for (int r = 0; r < tp; r++) EXPECT_EQ(got[r], want) << "rank " << r;
}

// One rank through NCCL is the model without it: the same operations (the all-reduce of one rank
// is a copy), so the same logits bit for bit and the same tokens, on one GPU.
TEST(NcclComm, OneRankThroughNcclIsTheModelWithout) {
    const std::string why = missing(1);
    if (!why.empty()) GTEST_SKIP() << why;
    const std::string dir = fixture_dir("diffllama_gqa8");
    const std::vector<int32_t> prompt = {1, 5, 9, 14, 2, 7, 30, 11};
    cinfer_load_options options{};
    options.backend = CINFER_BACKEND_CUDA;
    options.dtype = CINFER_DTYPE_F32;
    auto logits_of = [&](cinfer_model *m) {
        std::vector<float> logits(prompt.size() * (size_t)cinfer_model_get_info(m)->vocab_size);
        cinfer_session *session = nullptr;
        EXPECT_EQ(cinfer_session_create(m, 32, &session), CINFER_OK) << cinfer_last_error();
        if (!session) return logits;
        EXPECT_EQ(cinfer_session_forward(session, prompt.data(), (int)prompt.size(),
                                         CINFER_LOGITS_ALL, logits.data()),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
        return logits;
    };
    cinfer_model *whole = nullptr;
    ASSERT_EQ(cinfer_model_load(dir.c_str(), &options, &whole), CINFER_OK) << cinfer_last_error();
    const std::vector<float> want = logits_of(whole);
    cinfer_model_free(whole);
    run_on_gpus(1, [&](int, ci_comm *comm, ci_backend *) {
        cinfer_model *m = nullptr;
        ASSERT_EQ(ci_model_load_shard(dir.c_str(), &options, comm, &m), CINFER_OK)
            << cinfer_last_error();
        EXPECT_EQ(logits_of(m), want);
        cinfer_model_free(m);
    });
}

} // namespace
