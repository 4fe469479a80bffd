// The CPU communicator (kernels/comm.h, kernels/cpu/comm_cpu.c): tensor-parallel ranks as threads
// of this process. Every collective on fresh random data (the seed is printed; CINFER_TEST_SEED
// replays it), many times, for 1 to 8 ranks, against what it must give: the sum of the ranks'
// values taken in rank order ((x0 + x1) + x2) + ..., bit for bit on every rank. Then misuse: ranks
// that disagree, a rank that never comes, one that gives up or leaves, all of which must end in an
// error on every rank, never a hang.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "tensor_parallel_test.h"

extern "C" {
#include "kernels/backend.h"
#include "kernels/comm.h"
}

using namespace cinfer_test;

namespace {

constexpr int kMaxRanks = 8;

// tp ranks, each with its communicator and a CPU backend (the one its collectives take), run as
// threads by run().
struct Ranks {
    ci_comm_group *group = nullptr;
    std::vector<ci_comm *> comms;
    std::vector<ci_backend *> backends;

    explicit Ranks(int tp, double timeout_seconds = 30.0) {
        EXPECT_EQ(ci_comm_group_create(tp, timeout_seconds, &group), CINFER_OK)
            << cinfer_last_error();
        comms.assign(tp, nullptr);
        backends.assign(tp, nullptr);
        for (int r = 0; r < tp; r++) {
            EXPECT_EQ(ci_comm_cpu_create(group, r, &comms[r]), CINFER_OK) << cinfer_last_error();
            EXPECT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &backends[r]), CINFER_OK);
        }
    }
    ~Ranks() {
        for (ci_comm *comm : comms) ci_comm_destroy(comm);
        for (ci_backend *be : backends) ci_backend_free(be);
        ci_comm_group_free(group);
    }
    int size() const { return (int)comms.size(); }
    // body(rank, comm, backend) on one thread per rank; returns when every rank has returned
    void run(const std::function<void(int, ci_comm *, ci_backend *)> &body) {
        std::vector<std::thread> threads;
        for (int r = 0; r < size(); r++)
            threads.emplace_back([&, r] { body(r, comms[r], backends[r]); });
        for (auto &thread : threads) thread.join();
    }
};


bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST(CpuComm, AllReduceSumsInRankOrderWithTheSameBitsOnEveryRank) {
    std::mt19937_64 rng(fresh_seed());
    for (int tp = 1; tp <= kMaxRanks; tp++) {
        const int reps = 40;
        // sizes the element ranges split unevenly, empty ones, and a few thousand
        std::vector<size_t> sizes = {0, 1, (size_t)tp - 1, (size_t)tp + 1, 7, 4099};
        std::uniform_int_distribution<size_t> any_size(0, 5000);
        while ((int)sizes.size() < reps) sizes.push_back(any_size(rng));
        std::vector<std::vector<std::vector<float>>> inputs(reps); // [rep][rank]
        for (int rep = 0; rep < reps; rep++)
            for (int r = 0; r < tp; r++) inputs[rep].push_back(spread_floats(rng, sizes[rep]));
        std::vector<std::vector<std::vector<float>>> results(tp,
                                                             std::vector<std::vector<float>>(reps));
        std::vector<cinfer_status> status(tp, CINFER_OK);

        Ranks ranks(tp);
        ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
            for (int rep = 0; rep < reps && status[rank] == CINFER_OK; rep++) {
                std::vector<float> x = inputs[rep][rank];
                ci_tensor t = f32_tensor(x.data(), 1, (int64_t)x.size());
                status[rank] = ci_all_reduce_sum(comm, be, &t);
                results[rank][rep] = x;
            }
        });
        for (int rep = 0; rep < reps; rep++) {
            std::vector<float> want = inputs[rep][0];
            for (int r = 1; r < tp; r++)
                for (size_t i = 0; i < want.size(); i++) want[i] += inputs[rep][r][i];
            for (int r = 0; r < tp; r++) {
                ASSERT_EQ(status[r], CINFER_OK) << cinfer_last_error();
                EXPECT_TRUE(same_bits(results[r][rep], want))
                    << "tp " << tp << ", repetition " << rep << " (" << sizes[rep]
                    << " floats): rank " << r << " does not hold the rank-order sum";
            }
        }
    }
}

// x0 + x1 + x2 in another order gives another float: only ((x0 + x1) + x2) gives these.
TEST(CpuComm, AllReduceAddsRank0ThenRank1ThenRank2) {
    const std::vector<std::vector<float>> by_rank = {
        {1.0f, 1e8f, -1e8f}, {1e8f, -1e8f, 1.0f}, {-1e8f, 1.0f, 1e8f}};
    // element i: ranks hold by_rank[0][i], by_rank[1][i], by_rank[2][i]
    const std::vector<float> want = {(1.0f + 1e8f) + -1e8f, (1e8f + -1e8f) + 1.0f,
                                     (-1e8f + 1.0f) + 1e8f};
    ASSERT_EQ(want[0], 0.0f); // the 1 is lost when it meets 1e8 first
    ASSERT_EQ(want[1], 1.0f);
    std::vector<std::vector<float>> got(3);
    Ranks ranks(3);
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        std::vector<float> x = {by_rank[0][rank], by_rank[1][rank], by_rank[2][rank]};
        ci_tensor t = f32_tensor(x.data(), 1, 3);
        EXPECT_EQ(ci_all_reduce_sum(comm, be, &t), CINFER_OK);
        got[rank] = x;
    });
    for (int r = 0; r < 3; r++) EXPECT_TRUE(same_bits(got[r], want)) << "rank " << r;
}

TEST(CpuComm, AllGatherColumnsPutsEachRanksColumnsSideBySide) {
    std::mt19937_64 rng(fresh_seed() + 1);
    std::uniform_int_distribution<int64_t> any_rows(1, 9), any_cols(0, 300);
    for (int tp = 1; tp <= kMaxRanks; tp++) {
        const int reps = 25;
        std::vector<int64_t> rows(reps), cols(reps);
        std::vector<std::vector<std::vector<float>>> parts(reps); // [rep][rank]: [rows, cols]
        for (int rep = 0; rep < reps; rep++) {
            rows[rep] = any_rows(rng), cols[rep] = any_cols(rng);
            for (int r = 0; r < tp; r++)
                parts[rep].push_back(random_floats(rng, (size_t)(rows[rep] * cols[rep])));
        }
        std::vector<std::vector<std::vector<float>>> results(tp,
                                                             std::vector<std::vector<float>>(reps));
        Ranks ranks(tp);
        ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
            for (int rep = 0; rep < reps; rep++) {
                // the part goes through the communicator's gather buffer, as the logits do
                const size_t bytes = parts[rep][rank].size() * sizeof(float);
                float *part = static_cast<float *>(ci_comm_gather_buffer(comm, bytes));
                ASSERT_NE(part, nullptr);
                if (bytes) std::memcpy(part, parts[rep][rank].data(), bytes);
                std::vector<float> out((size_t)(rows[rep] * cols[rep] * tp), NAN);
                ci_tensor part_t = f32_tensor(part, rows[rep], cols[rep]);
                ci_tensor out_t = f32_tensor(out.data(), rows[rep], cols[rep] * tp);
                if (ci_all_gather_columns(comm, be, &out_t, &part_t) != CINFER_OK) {
                    ADD_FAILURE() << cinfer_last_error();
                    return;
                }
                results[rank][rep] = out;
            }
        });
        for (int rep = 0; rep < reps; rep++) {
            const int64_t R = rows[rep], n = cols[rep];
            std::vector<float> want((size_t)(R * n * tp));
            for (int r = 0; r < tp; r++)
                for (int64_t t = 0; t < R; t++)
                    for (int64_t j = 0; j < n; j++)
                        want[(size_t)(t * n * tp + r * n + j)] = parts[rep][r][(size_t)(t * n + j)];
            for (int r = 0; r < tp; r++)
                EXPECT_TRUE(same_bits(results[r][rep], want))
                    << "tp " << tp << ", [" << R << ", " << n << "] per rank, rank " << r;
        }
    }
}

TEST(CpuComm, BroadcastGivesEveryRankTheRootsBytes) {
    std::mt19937_64 rng(fresh_seed() + 2);
    std::uniform_int_distribution<size_t> any_size(0, 10000);
    std::uniform_int_distribution<int> byte(0, 255);
    for (int tp = 1; tp <= kMaxRanks; tp++) {
        const int reps = 3 * tp;
        std::vector<std::vector<std::vector<unsigned char>>> start(reps); // [rep][rank]
        std::vector<int> roots(reps);
        for (int rep = 0; rep < reps; rep++) {
            roots[rep] = rep % tp;
            const size_t n = any_size(rng);
            for (int r = 0; r < tp; r++) {
                std::vector<unsigned char> bytes(n);
                for (auto &b : bytes) b = (unsigned char)byte(rng);
                start[rep].push_back(bytes);
            }
        }
        std::vector<std::vector<std::vector<unsigned char>>> got(
            tp, std::vector<std::vector<unsigned char>>(reps));
        Ranks ranks(tp);
        ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
            for (int rep = 0; rep < reps; rep++) {
                std::vector<unsigned char> data = start[rep][rank];
                EXPECT_EQ(ci_broadcast(comm, be, data.data(), data.size(), roots[rep]), CINFER_OK);
                got[rank][rep] = data;
            }
        });
        for (int rep = 0; rep < reps; rep++)
            for (int r = 0; r < tp; r++)
                EXPECT_EQ(got[r][rep], start[rep][roots[rep]])
                    << "tp " << tp << ", root " << roots[rep] << ", rank " << r;
    }
}

// Collectives of changing kinds and sizes back to back: the staging sets alternate and grow while
// slower ranks may still be reading the previous collective's.
TEST(CpuComm, AMixedSequenceOfCollectivesStaysCorrect) {
    std::mt19937_64 rng(fresh_seed() + 3);
    const int tp = 5, steps = 300;
    std::uniform_int_distribution<int> kind(0, 3);
    std::uniform_int_distribution<size_t> any_size(1, 3000);
    struct Step {
        int kind;
        size_t n;
        int root;
        std::vector<std::vector<float>> inputs; // [rank]
    };
    std::vector<Step> script(steps);
    for (auto &s : script) {
        s.kind = kind(rng), s.n = any_size(rng), s.root = (int)(s.n % tp);
        for (int r = 0; r < tp; r++) s.inputs.push_back(spread_floats(rng, s.n));
    }
    std::vector<std::vector<std::vector<float>>> got(tp, std::vector<std::vector<float>>(steps));
    Ranks ranks(tp);
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        std::mt19937 jitter(rank);
        for (int i = 0; i < steps; i++) {
            const Step &s = script[i];
            if (jitter() % 16 == 0) std::this_thread::yield(); // let ranks drift apart
            std::vector<float> x = s.inputs[rank];
            cinfer_status status = CINFER_OK;
            if (s.kind == 0) {
                ci_tensor t = f32_tensor(x.data(), 1, (int64_t)s.n);
                status = ci_all_reduce_sum(comm, be, &t);
            } else if (s.kind == 1) {
                std::vector<float> out(s.n * tp);
                ci_tensor part = f32_tensor(x.data(), 1, (int64_t)s.n);
                ci_tensor all = f32_tensor(out.data(), 1, (int64_t)(s.n * tp));
                status = ci_all_gather_columns(comm, be, &all, &part);
                x = out;
            } else if (s.kind == 2) {
                status = ci_broadcast(comm, be, x.data(), s.n * sizeof(float), s.root);
            } else {
                status = ci_comm_barrier(comm, be);
            }
            if (status != CINFER_OK) {
                ADD_FAILURE() << "step " << i << ": " << cinfer_last_error();
                ci_comm_abort(comm, "the test failed");
                return;
            }
            got[rank][i] = x;
        }
    });
    for (int i = 0; i < steps; i++) {
        const Step &s = script[i];
        std::vector<float> want = s.inputs[0];
        if (s.kind == 0)
            for (int r = 1; r < tp; r++)
                for (size_t j = 0; j < s.n; j++) want[j] += s.inputs[r][j];
        if (s.kind == 1) {
            want.clear();
            for (int r = 0; r < tp; r++)
                want.insert(want.end(), s.inputs[r].begin(), s.inputs[r].end());
        }
        if (s.kind == 2) want = s.inputs[s.root];
        for (int r = 0; r < tp; r++) {
            if (s.kind == 3) want = s.inputs[r]; // a barrier moves no data
            EXPECT_TRUE(same_bits(got[r][i], want))
                << "step " << i << " (kind " << s.kind << "), rank " << r;
        }
    }
}

TEST(CpuComm, ABarrierReturnsOnlyOnceEveryRankHasCalledIt) {
    const int tp = 6;
    std::atomic<int> before{0};
    std::vector<int> seen(tp, -1);
    Ranks ranks(tp);
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5 * rank));
        before++;
        EXPECT_EQ(ci_comm_barrier(comm, be), CINFER_OK);
        seen[rank] = before.load();
    });
    for (int r = 0; r < tp; r++)
        EXPECT_EQ(seen[r], tp) << "rank " << r << " left the barrier early";
}

TEST(CpuComm, TheGatherBufferIsKeptAndGrows) {
    Ranks ranks(1);
    ci_comm *comm = ranks.comms[0];
    void *first = ci_comm_gather_buffer(comm, 1000);
    ASSERT_NE(first, nullptr);
    EXPECT_EQ(ci_comm_gather_buffer(comm, 10), first);
    EXPECT_EQ(ci_comm_gather_buffer(comm, 1000), first);
    void *grown = ci_comm_gather_buffer(comm, 100000);
    ASSERT_NE(grown, nullptr);
    std::memset(grown, 0x5a, 100000); // ASan: all of it is ours
}

// ---- misuse: every rank fails, none hangs ----------------------------------------------------

struct Outcome {
    cinfer_status status = CINFER_OK;
    std::string message;
    double seconds = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(CpuComm, RanksThatPassDifferentSizesAllFailAndSaySo) {
    const int tp = 3;
    std::vector<Outcome> out(tp), later(tp);
    Ranks ranks(tp);
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        std::vector<float> x(rank == 2 ? 11 : 10, 1.0f);
        ci_tensor t = f32_tensor(x.data(), 1, (int64_t)x.size());
        out[rank].status = ci_all_reduce_sum(comm, be, &t);
        out[rank].message = cinfer_last_error();
        // the group stays aborted
        later[rank].status = ci_comm_barrier(comm, be);
        later[rank].message = cinfer_last_error();
    });
    for (int r = 0; r < tp; r++) {
        EXPECT_EQ(out[r].status, CINFER_ERR_COMM) << "rank " << r;
        EXPECT_TRUE(contains_all(out[r].message,
                                 {"different collectives", "rank 0 all_reduce_sum #0",
                                  "of 10 floats", "rank 2 all_reduce_sum #0", "of 11 floats"}));
        EXPECT_EQ(later[r].status, CINFER_ERR_COMM);
        EXPECT_TRUE(contains_all(later[r].message, {"of 11 floats"})); // the first reason stays
    }
}

TEST(CpuComm, RanksThatCallDifferentCollectivesAllFail) {
    const int tp = 4;
    std::vector<Outcome> out(tp);
    Ranks ranks(tp);
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        std::vector<float> x(16, 2.0f);
        ci_tensor t = f32_tensor(x.data(), 1, 16);
        out[rank].status =
            rank == 1 ? ci_broadcast(comm, be, x.data(), 64, 0) : ci_all_reduce_sum(comm, be, &t);
        out[rank].message = cinfer_last_error();
    });
    for (int r = 0; r < tp; r++) {
        EXPECT_EQ(out[r].status, CINFER_ERR_COMM) << "rank " << r;
        EXPECT_TRUE(contains_all(out[r].message, {"rank 1 broadcast #0 of 64 bytes from rank 0",
                                                  "rank 3 all_reduce_sum #0"}));
    }
}

TEST(CpuComm, ARankThatNeverComesTimesTheOthersOut) {
    const int tp = 3;
    const double timeout = 0.3;
    std::vector<Outcome> out(tp);
    Ranks ranks(tp, timeout);
    const auto start = std::chrono::steady_clock::now();
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        if (rank == 2) return; // stuck elsewhere, as far as the others can tell
        std::vector<float> x(8, 1.0f);
        ci_tensor t = f32_tensor(x.data(), 1, 8);
        out[rank].status = ci_all_reduce_sum(comm, be, &t);
        out[rank].message = cinfer_last_error();
        out[rank].seconds = seconds_since(start);
    });
    for (int r = 0; r < 2; r++) {
        EXPECT_EQ(out[r].status, CINFER_ERR_COMM);
        EXPECT_TRUE(contains_all(out[r].message, {"rank(s) 2, which never arrived", "0.3 s"}));
        EXPECT_GE(out[r].seconds, 0.9 * timeout);
        EXPECT_LT(out[r].seconds, 10.0); // the timeout, not a hang (generous for ASan and load)
    }
}

TEST(CpuComm, ARankThatGivesUpWakesTheOthersAtOnce) {
    const int tp = 3;
    std::vector<Outcome> out(tp);
    Ranks ranks(tp, /*timeout_seconds=*/300.0);
    const auto start = std::chrono::steady_clock::now();
    ranks.run([&](int rank, ci_comm *comm, ci_backend *be) {
        if (rank == 1) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            ci_comm_abort(comm, "its checkpoint could not be read");
            return;
        }
        std::vector<float> x(8, 1.0f);
        ci_tensor t = f32_tensor(x.data(), 1, 8);
        out[rank].status = ci_all_reduce_sum(comm, be, &t);
        out[rank].message = cinfer_last_error();
        out[rank].seconds = seconds_since(start);
    });
    for (int r : {0, 2}) {
        EXPECT_EQ(out[r].status, CINFER_ERR_COMM);
        EXPECT_TRUE(contains_all(out[r].message,
                                 {"rank 1 aborted the group: its checkpoint could not be read"}));
        EXPECT_LT(out[r].seconds, 10.0) << "waited for the timeout instead of the abort";
    }
}

TEST(CpuComm, ARankThatLeavesWhileOthersWaitMakesThemFail) {
    const int tp = 2;
    ci_comm_group *group = nullptr;
    ASSERT_EQ(ci_comm_group_create(tp, 300.0, &group), CINFER_OK);
    ci_comm *comms[tp] = {};
    for (int r = 0; r < tp; r++) ASSERT_EQ(ci_comm_cpu_create(group, r, &comms[r]), CINFER_OK);
    Outcome waiting;
    const auto start = std::chrono::steady_clock::now();
    std::thread rank0([&] {
        waiting.status = ci_comm_barrier(comms[0], nullptr);
        waiting.message = cinfer_last_error();
        waiting.seconds = seconds_since(start);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ci_comm_destroy(comms[1]); // rank 1 is done, without the barrier rank 0 waits in
    rank0.join();
    EXPECT_EQ(waiting.status, CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(waiting.message, {"rank 0 waits in barrier #0", "rank(s) 1 left"}));
    EXPECT_LT(waiting.seconds, 10.0);
    ci_comm_destroy(comms[0]);
    ci_comm_group_free(group);
}

TEST(CpuComm, GroupsAndRanksOutOfRangeAreRefused) {
    ci_comm_group *group = nullptr;
    EXPECT_EQ(ci_comm_group_create(0, 0, &group), CINFER_ERR_ARGUMENT);
    EXPECT_EQ(group, nullptr);
    ASSERT_EQ(ci_comm_group_create(2, 0, &group), CINFER_OK);
    ci_comm *comm = nullptr, *again = nullptr;
    EXPECT_EQ(ci_comm_cpu_create(group, 2, &comm), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"rank 2", "group of 2"}));
    EXPECT_EQ(ci_comm_cpu_create(group, -1, &comm), CINFER_ERR_ARGUMENT);
    ASSERT_EQ(ci_comm_cpu_create(group, 1, &comm), CINFER_OK);
    EXPECT_EQ(ci_comm_cpu_create(group, 1, &again), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"rank 1", "already has a communicator"}));
    ci_comm_destroy(comm);
    ci_comm_group_free(group);
}

TEST(NcclComm, ABuildWithoutNcclSaysSo) {
    if (ci_comm_nccl_compiled()) GTEST_SKIP() << "this build has NCCL (tests/test_cuda_comm.cpp)";
    ci_comm_id id;
    EXPECT_EQ(ci_comm_nccl_unique_id(&id), CINFER_ERR_UNSUPPORTED);
    ci_comm *comm = nullptr;
    EXPECT_EQ(ci_comm_nccl_create(&id, 0, 1, 0, &comm), CINFER_ERR_UNSUPPORTED);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"no NCCL communicator", "CINFER_NCCL"}));
    EXPECT_EQ(comm, nullptr);
}

} // namespace
