// Tensor-parallel ranks as processes: the TCP layer (common/socket.c), the rendezvous and control
// messages (engine/tp_link.c) and the socket communicator (kernels/cpu/comm_socket.c). Rank 0 runs
// in the test's process; ranks 1 .. tp-1 are fork()ed children, each forked before rank 0 accepts
// (so that no child holds a copy of another rank's connection) and reporting through shared memory
// and its exit status. Every collective on fresh random data (the seed is printed; CINFER_TEST_SEED
// replays it) must give, bit for bit, what the thread communicator gives on the same data. Then
// failure: ranks that never join, join twice or with another tp, a stranger on the port, a rank
// killed, a rank that gives up, ranks that disagree, a rank that never comes: every rank ends in
// an error that names the culprit, quickly, never a hang.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "tensor_parallel_test.h"

extern "C" {
#include "common/socket.h"
#include "engine/tp_link.h"
#include "kernels/backend.h"
#include "kernels/comm.h"
}

using namespace cinfer_test;

namespace {

constexpr int kMaxChildren = 8;
// Short: the failure tests wait for it; the others never come near it on a loaded machine.
constexpr double kTimeout = 1.0;
constexpr double kPatientTimeout = 20.0; // where a failure must show long before the timeout

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// What one rank saw: its status and message, and how long it took.
struct Outcome {
    cinfer_status status = CINFER_OK;
    char message[2048] = {};
    double seconds = 0;
    char mismatch[256] = {}; // a child's own check that failed, empty when none

    void record(cinfer_status s, std::chrono::steady_clock::time_point start) {
        status = s;
        std::snprintf(message, sizeof message, "%s", s == CINFER_OK ? "" : cinfer_last_error());
        seconds = seconds_since(start);
    }
};

// A follower's part once it has joined: its link, communicator and CPU backend, its outcome.
using FollowerBody = std::function<void(ci_tp_link *, ci_comm *, ci_backend *, Outcome &)>;

// Rank 0 in this process with its link; children forked by spawn(), each with an Outcome in
// memory shared across the fork. The destructor kills and reaps whatever child is left, so that
// a failing test leaves no process behind.
class Group {
  public:
    // Listens at once, unless listen_now is false (then listen() does, at address).
    Group(int tp, double timeout_seconds, const std::string &address = "127.0.0.1:0",
          bool listen_now = true)
        : tp_(tp), timeout_(timeout_seconds), address_(address) {
        void *shared = mmap(nullptr, sizeof(Outcome) * kMaxChildren, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        EXPECT_NE(shared, MAP_FAILED);
        children_ = static_cast<Outcome *>(shared);
        for (int i = 0; i < kMaxChildren; i++) new (&children_[i]) Outcome();
        if (listen_now) listen();
    }
    void listen() {
        EXPECT_EQ(ci_tp_link_listen(address_.c_str(), tp_, timeout_, &link_), CINFER_OK)
            << cinfer_last_error();
        if (link_) address_ = ci_tp_link_address(link_);
    }
    // What accept() sends and every spawn_rank() child checks it received.
    void set_hello(const std::vector<unsigned char> &hello) { hello_ = hello; }
    ~Group() {
        ci_comm_destroy(comm_);
        ci_tp_link_free(link_);
        for (size_t i = 0; i < pids_.size(); i++) {
            if (waited_[i]) continue;
            kill(pids_[i], SIGKILL);
            waitpid(pids_[i], nullptr, 0);
        }
        munmap(children_, sizeof(Outcome) * kMaxChildren);
    }
    const char *address() const { return address_.c_str(); }

    // Child number i (in the order spawned) runs body(its outcome) and exits 0.
    int spawn(const std::function<void(Outcome &)> &body) {
        const int i = (int)pids_.size();
        const pid_t pid = fork();
        if (pid == 0) {
            ci_tp_link_free(link_); // the listening socket is rank 0's
            link_ = nullptr;
            body(children_[i]);
            _exit(0);
        }
        EXPECT_GT(pid, 0) << "fork";
        pids_.push_back(pid);
        waited_.push_back(0);
        return i;
    }
    // A follower that joins as `rank` of `tp` (the group's by default), checks the hello, makes its
    // communicator and runs body; a failed join is its outcome.
    int spawn_rank(int rank, const FollowerBody &body = nullptr, int tp = 0) {
        const std::string address = address_;
        const std::vector<unsigned char> want = hello_;
        const double timeout = timeout_;
        tp = tp ? tp : tp_;
        return spawn([=](Outcome &out) {
            const auto start = std::chrono::steady_clock::now();
            ci_tp_link *link = nullptr;
            void *hello = nullptr;
            size_t hello_bytes = 0;
            cinfer_status s =
                ci_tp_link_join(address.c_str(), rank, tp, timeout, &link, &hello, &hello_bytes);
            ci_comm *comm = nullptr;
            ci_backend *be = nullptr;
            if (s == CINFER_OK) s = ci_tp_link_comm(link, &comm);
            if (s == CINFER_OK) s = ci_backend_create(CINFER_BACKEND_CPU, 1, &be);
            out.record(s, start);
            if (s == CINFER_OK &&
                (hello_bytes != want.size() || std::memcmp(hello, want.data(), hello_bytes) != 0))
                std::snprintf(out.mismatch, sizeof out.mismatch, "not rank 0's hello");
            if (s == CINFER_OK && body) body(link, comm, be, out);
            ci_comm_destroy(comm);
            ci_backend_free(be);
            ci_tp_link_free(link);
            std::free(hello);
        });
    }
    // Rank 0's side of the rendezvous, and its communicator.
    cinfer_status accept() {
        cinfer_status s = ci_tp_link_accept(link_, hello_.data(), hello_.size());
        if (s == CINFER_OK) s = ci_tp_link_comm(link_, &comm_);
        return s;
    }
    ci_comm *comm() const { return comm_; }
    ci_tp_link *link() const { return link_; }
    Outcome &child(int i) { return children_[i]; }
    pid_t pid(int i) const { return pids_[i]; }
    // The exit status of child i: 0 when it ran to its end, 128 + the signal that killed it.
    int wait(int i) {
        int status = 0;
        waitpid(pids_[i], &status, 0);
        waited_[i] = 1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    void wait_all() {
        for (size_t i = 0; i < pids_.size(); i++) {
            if (waited_[i]) continue;
            EXPECT_EQ(wait((int)i), 0) << "child " << i;
        }
    }

  private:
    int tp_;
    double timeout_;
    std::string address_;
    std::vector<unsigned char> hello_ = {'h', 'i'};
    ci_tp_link *link_ = nullptr;
    ci_comm *comm_ = nullptr;
    Outcome *children_ = nullptr;
    std::vector<pid_t> pids_;
    std::vector<int> waited_;
};

// ---- every collective = the thread communicator's, bit for bit ----------------------------------


enum Kind { kAllReduce, kAllGather, kBroadcast, kBarrier, kKinds };
const char *const kKindNames[] = {"all_reduce_sum", "all_gather_columns", "broadcast", "barrier"};

// One collective of a script: each rank's input [rows, cols].
struct Step {
    Kind kind;
    int64_t rows, cols;
    int root;
    std::vector<std::vector<float>> inputs; // [rank]
};

// What the collective leaves with the calling rank: x after an all-reduce or broadcast, out after
// a gather (its part through the gather buffer, as the logits go), the input after a barrier.
std::vector<float> run_step(ci_comm *comm, ci_backend *be, const Step &s, cinfer_status *status) {
    std::vector<float> x = s.inputs[comm->rank];
    switch (s.kind) {
    case kAllReduce: {
        ci_tensor t = f32_tensor(x.data(), s.rows, s.cols);
        *status = ci_all_reduce_sum(comm, be, &t);
        return x;
    }
    case kAllGather: {
        const size_t bytes = x.size() * sizeof(float);
        float *part = static_cast<float *>(ci_comm_gather_buffer(comm, bytes));
        if (bytes) std::memcpy(part, x.data(), bytes);
        std::vector<float> out(x.size() * (size_t)comm->size, NAN);
        ci_tensor part_t = f32_tensor(part, s.rows, s.cols);
        ci_tensor out_t = f32_tensor(out.data(), s.rows, s.cols * comm->size);
        *status = ci_all_gather_columns(comm, be, &out_t, &part_t);
        return out;
    }
    case kBroadcast: *status = ci_broadcast(comm, be, x.data(), x.size() * 4, s.root); return x;
    default: *status = ci_comm_barrier(comm, be); return x;
    }
}

// results[i]: what rank `comm->rank` holds after step i; stops at the first failure.
cinfer_status run_script(ci_comm *comm, ci_backend *be, const std::vector<Step> &script,
                         std::vector<std::vector<float>> &results) {
    results.assign(script.size(), {});
    for (size_t i = 0; i < script.size(); i++) {
        cinfer_status status = CINFER_OK;
        results[i] = run_step(comm, be, script[i], &status);
        if (status != CINFER_OK) return status;
    }
    return CINFER_OK;
}

// Mixed kinds and random sizes, with a few steps of megabytes (frames larger than a socket's
// buffers, which must be read while the others wait).
std::vector<Step> random_script(std::mt19937_64 &rng, int tp, int steps) {
    std::uniform_int_distribution<int> kind(0, kKinds - 1), rows(1, 4), root(0, tp - 1);
    std::uniform_int_distribution<int64_t> cols(0, 1500);
    std::vector<Step> script(steps);
    for (int i = 0; i < steps; i++) {
        Step &s = script[i];
        s.kind = Kind(kind(rng));
        s.rows = rows(rng), s.cols = cols(rng), s.root = root(rng);
        if (i % 20 == 7) s.kind = kAllReduce, s.rows = 2, s.cols = 300000; // 2.4 MB
        if (i % 20 == 13) s.kind = kAllGather, s.rows = 8, s.cols = 40000; // 1.3 MB
        for (int r = 0; r < tp; r++)
            s.inputs.push_back(spread_floats(rng, (size_t)(s.rows * s.cols)));
    }
    return script;
}

// The script on the thread communicator: [rank][step].
std::vector<std::vector<std::vector<float>>> on_threads(int tp, const std::vector<Step> &script) {
    ci_comm_group *group = nullptr;
    EXPECT_EQ(ci_comm_group_create(tp, 30.0, &group), CINFER_OK);
    std::vector<std::vector<std::vector<float>>> results(tp);
    std::vector<std::thread> threads;
    for (int r = 0; r < tp; r++)
        threads.emplace_back([&, r] {
            ci_comm *comm = nullptr;
            ci_backend *be = nullptr;
            EXPECT_EQ(ci_comm_cpu_create(group, r, &comm), CINFER_OK);
            EXPECT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
            EXPECT_EQ(run_script(comm, be, script, results[r]), CINFER_OK) << cinfer_last_error();
            ci_comm_destroy(comm);
            ci_backend_free(be);
        });
    for (auto &t : threads) t.join();
    ci_comm_group_free(group);
    return results;
}

// "" when got is want bit for bit, else where they first differ.
std::string first_difference(const std::vector<std::vector<float>> &got,
                             const std::vector<std::vector<float>> &want,
                             const std::vector<Step> &script) {
    for (size_t i = 0; i < want.size(); i++)
        if (i >= got.size() || got[i].size() != want[i].size() ||
            (!want[i].empty() &&
             std::memcmp(got[i].data(), want[i].data(), want[i].size() * sizeof(float)) != 0))
            return "step " + std::to_string(i) + " (" + kKindNames[script[i].kind] + " [" +
                   std::to_string(script[i].rows) + ", " + std::to_string(script[i].cols) +
                   "]) differs from the thread communicator's";
    return "";
}

TEST(SocketComm, EveryCollectiveGivesTheThreadCommunicatorsBits) {
    std::mt19937_64 rng(fresh_seed());
    for (int tp = 2; tp <= 4; tp++) {
        const std::vector<Step> script = random_script(rng, tp, 60);
        const auto want = on_threads(tp, script); // before the forks: no thread is running then
        Group group(tp, kPatientTimeout);
        for (int r = 1; r < tp; r++)
            group.spawn_rank(r, [&, r](ci_tp_link *, ci_comm *comm, ci_backend *be, Outcome &out) {
                std::vector<std::vector<float>> got;
                out.record(run_script(comm, be, script, got), std::chrono::steady_clock::now());
                std::snprintf(out.mismatch, sizeof out.mismatch, "%s",
                              first_difference(got, want[r], script).c_str());
            });
        ASSERT_EQ(group.accept(), CINFER_OK) << cinfer_last_error();
        ci_backend *be = nullptr;
        ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
        std::vector<std::vector<float>> got;
        EXPECT_EQ(run_script(group.comm(), be, script, got), CINFER_OK) << cinfer_last_error();
        ci_backend_free(be);
        EXPECT_EQ(first_difference(got, want[0], script), "") << "tp " << tp << ", rank 0";
        group.wait_all();
        for (int r = 1; r < tp; r++) {
            EXPECT_EQ(group.child(r - 1).status, CINFER_OK) << group.child(r - 1).message;
            EXPECT_STREQ(group.child(r - 1).mismatch, "") << "tp " << tp << ", rank " << r;
        }
    }
}

// ((x0 + x1) + x2): the 1 is lost where it meets 1e8 first, kept where the 1e8s cancel first.
TEST(SocketComm, AllReduceAddsRank0ThenRank1ThenRank2) {
    const std::vector<std::vector<float>> by_rank = {
        {1.0f, 1e8f, -1e8f}, {1e8f, -1e8f, 1.0f}, {-1e8f, 1.0f, 1e8f}};
    const std::vector<float> want = {0.0f, 1.0f, 0.0f};
    Group group(3, kPatientTimeout);
    auto sum_of_mine = [&](ci_comm *comm, std::vector<float> &x) {
        for (int i = 0; i < 3; i++) x[i] = by_rank[i][comm->rank];
        ci_tensor t = f32_tensor(x.data(), 1, 3);
        return ci_all_reduce_sum(comm, nullptr, &t);
    };
    for (int r = 1; r < 3; r++)
        group.spawn_rank(r, [&](ci_tp_link *, ci_comm *comm, ci_backend *, Outcome &out) {
            std::vector<float> x(3);
            out.record(sum_of_mine(comm, x), std::chrono::steady_clock::now());
            if (x != want)
                std::snprintf(out.mismatch, sizeof out.mismatch, "not the rank-order sum");
        });
    ASSERT_EQ(group.accept(), CINFER_OK) << cinfer_last_error();
    std::vector<float> x(3);
    EXPECT_EQ(sum_of_mine(group.comm(), x), CINFER_OK) << cinfer_last_error();
    EXPECT_EQ(x, want);
    group.wait_all();
    for (int i = 0; i < 2; i++) EXPECT_STREQ(group.child(i).mismatch, "") << "rank " << i + 1;
}

// ---- the rendezvous -----------------------------------------------------------------------------

TEST(TpLink, RanksThatJoinBeforeRank0ListensGetTheHello) {
    // a free port, closed again: the followers start before rank 0 listens there
    int fd = -1;
    char address[64];
    ASSERT_EQ(ci_socket_listen("127.0.0.1:0", 1, &fd, address, sizeof address), CINFER_OK);
    close(fd);
    const int tp = 3;
    Group group(tp, kPatientTimeout, address, /*listen_now=*/false);
    std::mt19937_64 rng(fresh_seed() + 1);
    std::vector<unsigned char> hello(CI_TP_LINK_MAX_HELLO_BYTES);
    for (auto &b : hello) b = (unsigned char)rng();
    group.set_hello(hello);
    for (int r = 1; r < tp; r++) group.spawn_rank(r);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    group.listen();
    ASSERT_NE(group.link(), nullptr);
    EXPECT_EQ(ci_tp_link_rank(group.link()), 0);
    EXPECT_EQ(ci_tp_link_size(group.link()), tp);
    EXPECT_EQ(group.accept(), CINFER_OK) << cinfer_last_error();
    group.wait_all();
    for (int i = 0; i < tp - 1; i++) {
        EXPECT_EQ(group.child(i).status, CINFER_OK) << group.child(i).message;
        EXPECT_STREQ(group.child(i).mismatch, "") << "rank " << i + 1;
    }
}

TEST(TpLink, ARankThatNeverJoinsIsNamed) {
    Group group(3, kTimeout);
    const int rank1 = group.spawn_rank(1);
    EXPECT_EQ(group.accept(), CINFER_ERR_COMM);
    EXPECT_TRUE(
        contains_all(cinfer_last_error(), {"rank(s) 2 of tp = 3 never joined within 1.0 s"}))
        << cinfer_last_error();
    group.wait_all();
    EXPECT_EQ(group.child(rank1).status, CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(group.child(rank1).message, {"rank 0 refused rank 1", "never joined"}))
        << group.child(rank1).message;
}

// A rendezvous broken by its children: rank 0's message, and that of each child that joined.
void expect_refused(Group &group, const std::string &rank0_says,
                    const std::vector<int> &refused_children) {
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(group.accept(), CINFER_ERR_COMM);
    const std::string message = cinfer_last_error();
    EXPECT_TRUE(contains_all(message, {rank0_says})) << message;
    EXPECT_LT(seconds_since(start), 0.9 * kTimeout) << "found only at the timeout";
    group.wait_all();
    for (int i : refused_children)
        EXPECT_TRUE(contains_all(group.child(i).message, {"refused", rank0_says}))
            << "child " << i << ": " << group.child(i).message;
}

TEST(TpLink, TwoProcessesWithTheSameRankAreRefused) {
    Group group(3, kTimeout);
    group.spawn_rank(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(100)); // the first rank 1 joins first
    const int second = group.spawn_rank(1);
    expect_refused(group, "rank 1 joined twice", {second});
}

TEST(TpLink, ARankWithAnotherTpIsRefusedWithBothNumbers) {
    Group group(3, kTimeout);
    const int odd = group.spawn_rank(2, nullptr, 4);
    expect_refused(group, "rank 2", {odd});
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"joined with tp = 4", "this group has tp = 3"}))
        << cinfer_last_error();
}

TEST(TpLink, SomethingThatIsNotARankIsRefused) {
    Group group(2, kTimeout);
    const std::string address = group.address();
    group.spawn([&](Outcome &) {
        int fd = -1;
        const char request[] = "GET / HTTP/1.1\r\nHost: cinfer\r\n\r\n";
        if (ci_socket_connect(address.c_str(), 5.0, &fd) == CINFER_OK)
            ci_socket_send(fd, request, sizeof request - 1, 5.0, "rank 0");
        close(fd);
    });
    expect_refused(group, "something that is not a cinfer rank connected from 127.0.0.1:", {});
}

// ---- control messages ---------------------------------------------------------------------------

// Each follower answers every message with its bytes plus its rank, until an empty one.
void echo_plus_rank(ci_tp_link *link, Outcome &out) {
    for (;;) {
        const void *msg = nullptr;
        size_t bytes = 0;
        const auto start = std::chrono::steady_clock::now();
        cinfer_status s = ci_tp_link_recv(link, 0, &msg, &bytes, 0);
        if (s != CINFER_OK || bytes == 0) return out.record(s, start);
        std::vector<unsigned char> answer((const unsigned char *)msg,
                                          (const unsigned char *)msg + bytes);
        for (auto &b : answer) b = (unsigned char)(b + ci_tp_link_rank(link));
        if ((s = ci_tp_link_send(link, answer.data(), answer.size())) != CINFER_OK)
            return out.record(s, start);
    }
}

TEST(TpLink, ControlMessagesOfEverySizeGoBothWays) {
    const int tp = 3;
    Group group(tp, kPatientTimeout);
    for (int r = 1; r < tp; r++)
        group.spawn_rank(r, [](ci_tp_link *link, ci_comm *, ci_backend *, Outcome &out) {
            echo_plus_rank(link, out);
        });
    ASSERT_EQ(group.accept(), CINFER_OK) << cinfer_last_error();
    std::mt19937_64 rng(fresh_seed() + 2);
    for (size_t bytes : {(size_t)1, (size_t)4096, (size_t)3 << 20, (size_t)7 << 20, (size_t)100}) {
        std::vector<unsigned char> msg(bytes);
        for (auto &b : msg) b = (unsigned char)rng();
        ASSERT_EQ(ci_tp_link_send_all(group.link(), msg.data(), bytes), CINFER_OK)
            << cinfer_last_error();
        for (int r = tp - 1; r >= 1; r--) { // any order: each peer has its own connection
            const void *got = nullptr;
            size_t n = 0;
            ASSERT_EQ(ci_tp_link_recv(group.link(), r, &got, &n, kPatientTimeout), CINFER_OK)
                << cinfer_last_error();
            ASSERT_EQ(n, bytes);
            const unsigned char *answer = static_cast<const unsigned char *>(got);
            size_t wrong = 0;
            for (size_t i = 0; i < n; i++) wrong += answer[i] != (unsigned char)(msg[i] + r);
            EXPECT_EQ(wrong, 0u) << bytes << " bytes from rank " << r;
        }
    }
    ASSERT_EQ(ci_tp_link_send_all(group.link(), "", 0), CINFER_OK); // the followers end
    group.wait_all();
    for (int i = 0; i < tp - 1; i++)
        EXPECT_EQ(group.child(i).status, CINFER_OK) << group.child(i).message;
    // with every follower gone, a wait without a timeout ends at once
    const auto start = std::chrono::steady_clock::now();
    const void *msg = nullptr;
    size_t n = 0;
    EXPECT_EQ(ci_tp_link_recv(group.link(), 2, &msg, &n, 0), CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tensor-parallel rank 2 closed the connection"}))
        << cinfer_last_error();
    EXPECT_LT(seconds_since(start), 1.0);
    EXPECT_EQ(ci_tp_link_recv(group.link(), 3, &msg, &n, 0), CINFER_ERR_ARGUMENT);
}

// ---- failure: every rank fails at once, naming the rank -----------------------------------------

// Ranks 1 .. tp-1 as children running follower(rank, comm, be) after the rendezvous, rank 0 running
// leader(comm) here; each rank's outcome. `timeout`: the group's.
struct Failure {
    Outcome rank0;
    std::vector<Outcome> followers; // [rank - 1]
    std::vector<int> exits;
};
using Body = std::function<cinfer_status(int rank, ci_comm *comm, ci_backend *be)>;
Failure run_failing(int tp, double timeout, const Body &body,
                    const std::function<void(Group &)> &meanwhile = nullptr) {
    Failure f;
    Group group(tp, timeout);
    for (int r = 1; r < tp; r++)
        group.spawn_rank(r, [&, r](ci_tp_link *, ci_comm *comm, ci_backend *be, Outcome &out) {
            const auto start = std::chrono::steady_clock::now();
            out.record(body(r, comm, be), start);
        });
    EXPECT_EQ(group.accept(), CINFER_OK) << cinfer_last_error();
    std::thread side; // rank 0's process acting on the others while rank 0 waits
    if (meanwhile) side = std::thread([&] { meanwhile(group); });
    const auto start = std::chrono::steady_clock::now();
    f.rank0.record(group.comm() ? body(0, group.comm(), nullptr) : CINFER_ERR_COMM, start);
    if (side.joinable()) side.join();
    for (int r = 1; r < tp; r++) {
        f.exits.push_back(group.wait(r - 1));
        f.followers.push_back(group.child(r - 1));
    }
    return f;
}

std::vector<float> ten(int rank) { return std::vector<float>(10, 1.0f + (float)rank); }

TEST(SocketComm, AKilledRankIsNamedAtOnce) {
    const int tp = 4;
    const Failure f = run_failing(
        tp, kPatientTimeout,
        [](int rank, ci_comm *comm, ci_backend *be) {
            if (rank == 2) pause(); // killed here
            std::vector<float> x = ten(rank);
            ci_tensor t = f32_tensor(x.data(), 1, 10);
            return ci_all_reduce_sum(comm, be, &t);
        },
        [](Group &group) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            kill(group.pid(1), SIGKILL); // rank 2
        });
    EXPECT_EQ(f.rank0.status, CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(f.rank0.message, {"tensor-parallel rank 2 closed its connection",
                                               "all_reduce_sum #0 of 10 floats"}))
        << f.rank0.message;
    EXPECT_LT(f.rank0.seconds, 2.0) << "seen only at a timeout";
    EXPECT_EQ(f.exits[1], 128 + SIGKILL);
    for (int r : {1, 3}) {
        EXPECT_EQ(f.followers[r - 1].status, CINFER_ERR_COMM) << "rank " << r;
        EXPECT_TRUE(contains_all(f.followers[r - 1].message, {"(rank " + std::to_string(r) + ")",
                                                              "rank 2 closed its connection"}))
            << f.followers[r - 1].message;
        EXPECT_LT(f.followers[r - 1].seconds, 2.0);
    }
}

// A follower's abort goes to rank 0, which relays it; rank 0's goes to every follower.
TEST(SocketComm, AnAbortReachesEveryRankAndStays) {
    const int tp = 3;
    for (int aborter : {2, 0}) {
        const Failure f =
            run_failing(tp, kPatientTimeout, [&](int rank, ci_comm *comm, ci_backend *be) {
                if (rank == aborter)
                    ci_comm_abort(comm, "its load failed");
                else
                    ci_comm_barrier(comm, be); // fails: the abort
                // aborted for good: the next collective fails at once, with the first reason
                const auto start = std::chrono::steady_clock::now();
                std::vector<float> x = ten(rank);
                ci_tensor t = f32_tensor(x.data(), 1, 10);
                const cinfer_status s = ci_all_reduce_sum(comm, be, &t);
                return seconds_since(start) < 0.5 ? s : CINFER_ERR_ARGUMENT;
            });
        const std::string reason =
            "rank " + std::to_string(aborter) + " aborted the group: its load failed";
        std::vector<const Outcome *> ranks = {&f.rank0, &f.followers[0], &f.followers[1]};
        for (int r = 0; r < tp; r++) {
            EXPECT_EQ(ranks[r]->status, CINFER_ERR_COMM) << "rank " << r;
            EXPECT_TRUE(contains_all(ranks[r]->message, {reason})) << "rank " << r;
            EXPECT_LT(ranks[r]->seconds, 2.0);
        }
    }
}

// A rank between collectives (a follower idle, rank 0 between steps) sees an abort in synchronize.
TEST(SocketComm, SynchronizeReportsAnAbortSentBetweenCollectives) {
    for (int aborter : {1, 0}) {
        const Failure f =
            run_failing(2, kPatientTimeout, [&](int rank, ci_comm *comm, ci_backend *be) {
                if (rank == aborter) {
                    ci_comm_abort(comm, "its load failed");
                    std::this_thread::sleep_for(std::chrono::milliseconds(100));
                    return ci_comm_synchronize(comm, be, 0);
                }
                const auto start = std::chrono::steady_clock::now();
                cinfer_status s = CINFER_OK;
                while ((s = ci_comm_synchronize(comm, be, 0)) == CINFER_OK &&
                       seconds_since(start) < 3)
                    std::this_thread::sleep_for(std::chrono::milliseconds(5));
                return s;
            });
        const std::string reason =
            "rank " + std::to_string(aborter) + " aborted the group: its load failed";
        for (const Outcome *o : {&f.rank0, &f.followers[0]}) {
            EXPECT_EQ(o->status, CINFER_ERR_COMM);
            EXPECT_TRUE(contains_all(o->message, {reason}));
            EXPECT_LT(o->seconds, 2.0);
        }
    }
}

TEST(SocketComm, RanksThatCallDifferentCollectivesAllFailWithBothDescriptions) {
    const Failure f = run_failing(3, kPatientTimeout, [](int rank, ci_comm *comm, ci_backend *be) {
        std::vector<float> x(rank == 2 ? 11 : 10, 1.5f);
        ci_tensor t = f32_tensor(x.data(), 1, (int64_t)x.size());
        return ci_all_reduce_sum(comm, be, &t);
    });
    for (const Outcome *o : {&f.rank0, &f.followers[0], &f.followers[1]}) {
        EXPECT_EQ(o->status, CINFER_ERR_COMM);
        EXPECT_TRUE(contains_all(o->message,
                                 {"different collectives", "rank 0 all_reduce_sum #0 of 10 floats",
                                  "rank 2 all_reduce_sum #0 of 11 floats"}))
            << o->message;
    }
}

// Rank 0 refuses a follower's header and stops reading it mid-frame: the follower, blocked sending
// megabytes no one reads, must hear the abort at once, not at the timeout.
TEST(SocketComm, AFollowerBlockedSendingHearsTheAbort) {
    const Failure f = run_failing(2, kPatientTimeout, [](int rank, ci_comm *comm, ci_backend *be) {
        if (rank == 0) return ci_comm_barrier(comm, be);
        std::vector<float> x((size_t)8 << 20, 0.5f); // 32 MB: far more than the socket buffers
        ci_tensor t = f32_tensor(x.data(), 1, (int64_t)x.size());
        return ci_all_reduce_sum(comm, be, &t);
    });
    for (const Outcome *o : {&f.rank0, &f.followers[0]}) {
        EXPECT_EQ(o->status, CINFER_ERR_COMM);
        EXPECT_TRUE(contains_all(o->message, {"different collectives", "rank 0 barrier #0",
                                              "rank 1 all_reduce_sum #0 of 8388608 floats"}))
            << o->message;
        EXPECT_LT(o->seconds, 2.0) << "heard only at a timeout";
    }
}

TEST(SocketComm, ARankThatNeverArrivesIsNamedAtTheTimeout) {
    const Failure f = run_failing(3, kTimeout, [](int rank, ci_comm *comm, ci_backend *be) {
        if (rank == 2) {
            // alive (no EOF to see) until rank 0's timeout has passed
            std::this_thread::sleep_for(std::chrono::duration<double>(1.3 * kTimeout));
            return CINFER_OK; // late, and gone
        }
        return ci_comm_barrier(comm, be);
    });
    for (const Outcome *o : {&f.rank0, &f.followers[0]}) {
        EXPECT_EQ(o->status, CINFER_ERR_COMM);
        EXPECT_TRUE(contains_all(
            o->message, {"rank 0 waited 1.0 s", "barrier #0", "rank(s) 2, which never arrived"}))
            << o->message;
        EXPECT_GT(o->seconds, 0.9 * kTimeout);
        EXPECT_LT(o->seconds, kTimeout + 0.9);
    }
}

TEST(SocketComm, MemoryOfAnotherBackendIsRefused) {
    ci_comm *comm = nullptr;
    ASSERT_EQ(ci_comm_socket_create(0, 1, nullptr, 0, &comm), CINFER_OK) << cinfer_last_error();
    ci_backend_ops gpu_ops = {};
    gpu_ops.name = "cuda";
    ci_backend gpu = {};
    gpu.ops = &gpu_ops;
    float x[4] = {1, 2, 3, 4};
    ci_tensor t = f32_tensor(x, 1, 4);
    EXPECT_EQ(ci_all_reduce_sum(comm, &gpu, &t), CINFER_ERR_UNSUPPORTED);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"'cuda' backend", "host memory only", "NCCL"}))
        << cinfer_last_error();
    ci_comm_destroy(comm);

    EXPECT_EQ(ci_comm_socket_create(2, 2, nullptr, 0, &comm), CINFER_ERR_ARGUMENT);
    EXPECT_EQ(ci_comm_socket_create(1, 2, nullptr, 0, &comm), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"no connection to rank 0"}))
        << cinfer_last_error();
    EXPECT_EQ(comm, nullptr);
}

// ---- the TCP layer ------------------------------------------------------------------------------

TEST(Socket, AddressesThatAreNotHostAndPortAreRefused) {
    int fd = -1;
    char bound[64];
    for (const char *bad :
         {"localhost", ":80", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:80x"}) {
        EXPECT_EQ(ci_socket_listen(bad, 1, &fd, bound, sizeof bound), CINFER_ERR_ARGUMENT) << bad;
        EXPECT_TRUE(contains_all(cinfer_last_error(), {bad, "expected host:port"}))
            << cinfer_last_error();
        EXPECT_EQ(ci_socket_connect(bad, 1.0, &fd), CINFER_ERR_ARGUMENT) << bad;
    }
    ASSERT_EQ(ci_socket_listen("localhost:0", 4, &fd, bound, sizeof bound), CINFER_OK)
        << cinfer_last_error();
    EXPECT_EQ(std::string(bound).rfind("127.0.0.1:", 0), 0u) << bound; // resolved, port chosen
    EXPECT_NE(std::string(bound), "127.0.0.1:0");
    close(fd);
}

TEST(Socket, WaitsEndAtTheirDeadlineAndAClosedPeerIsNamed) {
    int listener = -1, client = -1, server = -1;
    char bound[64];
    ASSERT_EQ(ci_socket_listen("127.0.0.1:0", 1, &listener, bound, sizeof bound), CINFER_OK);
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(ci_socket_accept(listener, 0.2, &server), CINFER_ERR_COMM);
    EXPECT_GT(seconds_since(start), 0.15);
    ASSERT_EQ(ci_socket_connect(bound, 1.0, &client), CINFER_OK) << cinfer_last_error();
    ASSERT_EQ(ci_socket_accept(listener, 1.0, &server), CINFER_OK) << cinfer_last_error();
    const char hello[] = "twelve bytes";
    char got[sizeof hello] = {};
    ASSERT_EQ(ci_socket_send(client, hello, sizeof hello, 1.0, "the server"), CINFER_OK);
    ASSERT_EQ(ci_socket_recv(server, got, sizeof got, 1.0, "the client"), CINFER_OK);
    EXPECT_STREQ(got, hello);
    start = std::chrono::steady_clock::now();
    EXPECT_EQ(ci_socket_recv(server, got, 1, 0.2, "the client"), CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"timed out", "the client"}))
        << cinfer_last_error();
    EXPECT_GT(seconds_since(start), 0.15);
    close(client);
    EXPECT_EQ(ci_socket_recv(server, got, 1, 0, "the client"), CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"the client closed the connection"}));
    // the peer is gone: an error, not a SIGPIPE
    std::vector<char> big(1 << 20);
    cinfer_status s = CINFER_OK;
    for (int i = 0; i < 8 && s == CINFER_OK; i++)
        s = ci_socket_send(server, big.data(), big.size(), 1.0, "the client");
    EXPECT_EQ(s, CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"the client closed the connection"}))
        << cinfer_last_error();
    close(server);
    close(listener);
    // nobody listens there any more: the connect retries until its deadline
    start = std::chrono::steady_clock::now();
    EXPECT_EQ(ci_socket_connect(bound, 0.3, &client), CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"cannot connect to", bound, "refused"}))
        << cinfer_last_error();
    EXPECT_GT(seconds_since(start), 0.2);
}

} // namespace
