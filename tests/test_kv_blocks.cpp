// The KV block pool (engine/kv_blocks.h): reference counts, the free blocks before the cached ones,
// LRU eviction of cached blocks, prefix lookups that compare tokens and not only hashes, and a
// seeded stress run against a plain reference model of the same rules.
#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "test_util.h"

extern "C" {
#include "engine/kv_blocks.h"
}

using cinfer_test::fresh_seed;

namespace {

struct Pool {
    ci_block_pool *p = nullptr;
    Pool(int n_blocks, int block_size) {
        EXPECT_EQ(ci_block_pool_create(n_blocks, block_size, &p), CINFER_OK) << cinfer_last_error();
    }
    ~Pool() { ci_block_pool_free(p); }
    Pool(const Pool &) = delete;
    Pool &operator=(const Pool &) = delete;
    operator ci_block_pool *() const { return p; }
};

using Tokens = std::vector<int32_t>;

void expect_counts(ci_block_pool *p, int used, int cached, int available) {
    EXPECT_EQ(ci_block_pool_n_used(p), used);
    EXPECT_EQ(ci_block_pool_n_cached(p), cached);
    EXPECT_EQ(ci_block_pool_n_available(p), available);
    EXPECT_EQ(ci_block_pool_n_used(p) + ci_block_pool_n_available(p), ci_block_pool_n_blocks(p));
}

} // namespace

TEST(KvBlocks, CreateRefusesEmptyPools) {
    ci_block_pool *p = nullptr;
    EXPECT_EQ(ci_block_pool_create(0, 16, &p), CINFER_ERR_ARGUMENT);
    EXPECT_EQ(p, nullptr);
    EXPECT_EQ(ci_block_pool_create(4, 0, &p), CINFER_ERR_ARGUMENT);
    EXPECT_EQ(p, nullptr);
    Pool ok(3, 16);
    EXPECT_EQ(ci_block_pool_n_blocks(ok), 3);
    EXPECT_EQ(ci_block_pool_block_size(ok), 16);
    expect_counts(ok, 0, 0, 3);
}

TEST(KvBlocks, AllocUntilExhaustedReturnsMinusOne) {
    Pool p(4, 2);
    std::set<int> got;
    for (int i = 0; i < 4; i++) {
        int b = ci_block_alloc(p);
        ASSERT_GE(b, 0);
        ASSERT_LT(b, 4);
        EXPECT_EQ(ci_block_refcount(p, b), 1);
        got.insert(b);
        expect_counts(p, i + 1, 0, 3 - i);
    }
    EXPECT_EQ(got.size(), 4u);
    EXPECT_EQ(ci_block_alloc(p), -1);
    EXPECT_EQ(ci_block_alloc(p), -1);
    expect_counts(p, 4, 0, 0);
}

TEST(KvBlocks, ReleaseAllocRoundTrips) {
    Pool p(2, 4);
    int a = ci_block_alloc(p), b = ci_block_alloc(p);
    ASSERT_NE(a, b);
    ci_block_retain(p, a);
    EXPECT_EQ(ci_block_refcount(p, a), 2);
    ci_block_release(p, a);
    EXPECT_EQ(ci_block_refcount(p, a), 1);
    expect_counts(p, 2, 0, 0);
    ci_block_release(p, a);
    EXPECT_EQ(ci_block_refcount(p, a), 0);
    expect_counts(p, 1, 0, 1);
    EXPECT_EQ(ci_block_alloc(p), a); // the only available one
    EXPECT_EQ(ci_block_alloc(p), -1);
    for (int round = 0; round < 100; round++) {
        ci_block_release(p, b);
        b = ci_block_alloc(p);
        ASSERT_GE(b, 0);
        expect_counts(p, 2, 0, 0);
    }
    ci_block_release(p, a);
    ci_block_release(p, b);
    expect_counts(p, 0, 0, 2);
}

TEST(KvBlocks, HashChainsParentAndTokens) {
    Tokens a{1, 2, 3, 4}, b{1, 2, 3, 5}, swapped{2, 1, 3, 4};
    uint64_t ha = ci_block_hash(0, a.data(), 4);
    EXPECT_EQ(ha, ci_block_hash(0, a.data(), 4));
    EXPECT_NE(ha, ci_block_hash(0, b.data(), 4));
    EXPECT_NE(ha, ci_block_hash(0, swapped.data(), 4));
    EXPECT_NE(ha, ci_block_hash(1, a.data(), 4));
    EXPECT_NE(ha, ci_block_hash(0, a.data(), 3));
    EXPECT_NE(ci_block_hash(ha, a.data(), 4), ha);
}

TEST(KvBlocks, CommitThenLookupHitsTheSameBlock) {
    Pool p(4, 4);
    Tokens first{10, 11, 12, 13}, second{14, 15, 16, 17};
    int b0 = ci_block_alloc(p), b1 = ci_block_alloc(p);
    uint64_t h0 = 0, h1 = 0, got = 0;
    ci_block_commit(p, b0, 0, first.data(), &h0);
    EXPECT_EQ(h0, ci_block_hash(0, first.data(), 4));
    ci_block_commit(p, b1, h0, second.data(), &h1); // the chain: second follows first
    EXPECT_EQ(h1, ci_block_hash(h0, second.data(), 4));
    EXPECT_TRUE(ci_block_is_committed(p, b0));

    EXPECT_EQ(ci_block_lookup(p, 0, first.data(), &got), b0);
    EXPECT_EQ(got, h0);
    EXPECT_EQ(ci_block_refcount(p, b0), 2);
    EXPECT_EQ(ci_block_lookup(p, got, second.data(), &got), b1);
    EXPECT_EQ(got, h1);
    EXPECT_EQ(ci_block_refcount(p, b1), 2);
    EXPECT_EQ(ci_block_lookup(p, 0, second.data(), &got), -1); // right tokens, wrong parent
    EXPECT_EQ(ci_block_pool_n_lookups(p), 3);
    EXPECT_EQ(ci_block_pool_n_hits(p), 2);
    expect_counts(p, 2, 0, 2);
}

// The table compares the parent hash and the tokens: a block whose hash collides with a committed
// one is a miss, and two blocks of one hash are both found, each by its own tokens.
TEST(KvBlocks, LookupComparesTokensNotOnlyTheHash) {
    Pool p(4, 3);
    Tokens a{1, 2, 3}, b{1, 2, 4};
    int ba = ci_block_alloc(p);
    uint64_t ha = 0, got = 0;
    ci_block_commit(p, ba, 0, a.data(), &ha);
    EXPECT_EQ(ci_block_lookup(p, 0, b.data(), &got), -1);      // other tokens, same parent
    EXPECT_EQ(ci_block_lookup_hashed(p, ha, 0, b.data()), -1); // ...even under a's hash
    EXPECT_EQ(ci_block_lookup_hashed(p, ha, 7, a.data()), -1); // a's tokens and hash, other parent
    EXPECT_EQ(ci_block_refcount(p, ba), 1);

    int bb = ci_block_alloc(p); // b committed under a's hash: a forced collision
    ci_block_commit_hashed(p, bb, ha, 0, b.data());
    EXPECT_TRUE(ci_block_is_committed(p, bb));
    EXPECT_EQ(ci_block_lookup_hashed(p, ha, 0, a.data()), ba);
    EXPECT_EQ(ci_block_lookup_hashed(p, ha, 0, b.data()), bb);
    // both evictable, then evicted: the chain of one bucket loses each in turn
    for (int i = 0; i < 2; i++) {
        ci_block_release(p, ba);
        ci_block_release(p, bb);
    }
    expect_counts(p, 0, 2, 4);
    std::vector<int> held;
    for (int i = 0; i < 4; i++) held.push_back(ci_block_alloc(p));
    EXPECT_EQ(ci_block_lookup_hashed(p, ha, 0, a.data()), -1);
    EXPECT_EQ(ci_block_lookup_hashed(p, ha, 0, b.data()), -1);
    for (int h : held) ci_block_release(p, h);
    expect_counts(p, 0, 0, 4);
}

// Cached blocks are handed out only once no free block is left, least recently released first,
// and an evicted block's prefix is forgotten.
TEST(KvBlocks, EvictsCachedBlocksAfterFreeOnesInLruOrder) {
    Pool p(4, 2);
    Tokens t[3] = {{1, 1}, {2, 2}, {3, 3}};
    int b[4];
    uint64_t h[3];
    for (int &x : b) x = ci_block_alloc(p);
    for (int i = 0; i < 3; i++) ci_block_commit(p, b[i], 0, t[i].data(), &h[i]);
    ci_block_release(p, b[1]); // release order: 1, 2, 0 (cached), 3 (uncommitted: free)
    ci_block_release(p, b[2]);
    ci_block_release(p, b[0]);
    ci_block_release(p, b[3]);
    expect_counts(p, 0, 3, 4);

    EXPECT_EQ(ci_block_alloc(p), b[3]); // the free block before any cached one
    expect_counts(p, 1, 3, 3);
    uint64_t got = 0;
    EXPECT_EQ(ci_block_alloc(p), b[1]); // the least recently released
    EXPECT_FALSE(ci_block_is_committed(p, b[1]));
    EXPECT_EQ(ci_block_lookup(p, 0, t[1].data(), &got), -1); // its prefix is forgotten
    expect_counts(p, 2, 2, 2);
    EXPECT_EQ(ci_block_alloc(p), b[2]);
    EXPECT_EQ(ci_block_lookup(p, 0, t[0].data(), &got), b[0]); // still cached until evicted
    ci_block_release(p, b[0]);
    EXPECT_EQ(ci_block_alloc(p), b[0]);
    EXPECT_EQ(ci_block_lookup(p, 0, t[0].data(), &got), -1);
    EXPECT_EQ(ci_block_alloc(p), -1);
    expect_counts(p, 4, 0, 0);
}

TEST(KvBlocks, HitOnCachedBlockTakesItOffTheEvictableList) {
    Pool p(2, 2);
    Tokens t{5, 6};
    int b = ci_block_alloc(p), other = ci_block_alloc(p);
    uint64_t h = 0, got = 0;
    ci_block_commit(p, b, 0, t.data(), &h);
    ci_block_release(p, b);
    expect_counts(p, 1, 1, 1);
    EXPECT_EQ(ci_block_refcount(p, b), 0);

    EXPECT_EQ(ci_block_lookup(p, 0, t.data(), &got), b);
    EXPECT_EQ(got, h);
    EXPECT_EQ(ci_block_refcount(p, b), 1);
    expect_counts(p, 2, 0, 0);           // n_available dropped
    EXPECT_EQ(ci_block_alloc(p), -1);    // and alloc cannot evict it while held
    ci_block_release(p, b);              // cached again
    ci_block_release(p, other);          // free
    EXPECT_EQ(ci_block_alloc(p), other); // free first
    EXPECT_EQ(ci_block_alloc(p), b);     // then the cached one
    EXPECT_EQ(ci_block_pool_n_hits(p), 1);
}

TEST(KvBlocks, DuplicateCommitKeepsTheFirst) {
    Pool p(3, 2);
    Tokens t{7, 8};
    int first = ci_block_alloc(p), dup = ci_block_alloc(p);
    uint64_t h1 = 0, h2 = 0, got = 0;
    ci_block_commit(p, first, 0, t.data(), &h1);
    ci_block_commit(p, dup, 0, t.data(), &h2);
    EXPECT_EQ(h1, h2);
    EXPECT_TRUE(ci_block_is_committed(p, first));
    EXPECT_FALSE(ci_block_is_committed(p, dup));
    ci_block_commit(p, first, 0, t.data(), &h2); // committing it again: a no-op
    EXPECT_EQ(h2, h1);
    EXPECT_EQ(ci_block_lookup(p, 0, t.data(), &got), first);
    EXPECT_EQ(ci_block_refcount(p, first), 2);

    ci_block_release(p, dup); // uncommitted: back to the free blocks, not cached
    expect_counts(p, 1, 0, 2);
    ci_block_release(p, first);
    ci_block_release(p, first);
    expect_counts(p, 0, 1, 3);
    EXPECT_EQ(ci_block_lookup(p, 0, t.data(), &got), first);
    ci_block_release(p, first);
}

TEST(KvBlocksDeathTest, MisuseAborts) {
    Pool p(2, 2);
    int b = ci_block_alloc(p);
    ci_block_release(p, b);
    EXPECT_DEATH(ci_block_release(p, b), "refcount > 0");
    EXPECT_DEATH(ci_block_retain(p, b), "refcount > 0");
    EXPECT_DEATH(ci_block_release(p, 2), "b >= 0 && b < p->n_blocks");
    EXPECT_DEATH(ci_block_refcount(p, -1), "b >= 0 && b < p->n_blocks");
}

// Thousands of random operations against a reference model of the pool's rules: which block alloc
// may hand out (any free one, else exactly the least recently released cached one), what lookups
// find, every count after every operation. Few distinct tokens and parents, so that hits,
// duplicate commits and forced hash collisions are common.
TEST(KvBlocks, RandomOperationsMatchAReferenceModel) {
    const int n_blocks = 24, block_size = 3;
    Pool p(n_blocks, block_size);
    std::mt19937_64 rng(fresh_seed());
    auto pick = [&](size_t n) {
        return (size_t)std::uniform_int_distribution<size_t>(0, n - 1)(rng);
    };

    using Key = std::pair<uint64_t, Tokens>; // parent hash, tokens
    std::vector<int> refcount(n_blocks, 0);
    std::vector<int> held; // one entry per reference the test holds
    std::set<int> free_blocks;
    for (int b = 0; b < n_blocks; b++) free_blocks.insert(b);
    std::deque<int> lru;          // front: evicted first
    std::map<Key, int> committed; // what lookups must find
    std::map<int, Key> content;   // the inverse
    std::map<int, uint64_t> block_hash;
    std::vector<uint64_t> parents{0};

    auto random_key = [&]() {
        Tokens t(block_size);
        for (auto &x : t) x = (int32_t)pick(2);
        return Key{parents[pick(parents.size())], t};
    };
    auto take_reference = [&](int b) {
        if (refcount[b]++ == 0) lru.erase(std::find(lru.begin(), lru.end(), b));
        held.push_back(b);
    };
    auto check_counts = [&]() {
        int used = 0;
        for (int b = 0; b < n_blocks; b++) {
            used += refcount[b] > 0;
            ASSERT_EQ(ci_block_refcount(p, b), refcount[b]) << "block " << b;
            ASSERT_EQ(ci_block_is_committed(p, b), (int)content.count(b)) << "block " << b;
        }
        ASSERT_EQ(ci_block_pool_n_used(p), used);
        ASSERT_EQ(ci_block_pool_n_cached(p), (int)lru.size());
        ASSERT_EQ(ci_block_pool_n_available(p), (int)(free_blocks.size() + lru.size()));
        ASSERT_EQ(ci_block_pool_n_used(p) + ci_block_pool_n_available(p), n_blocks);
    };

    int64_t hits = 0, lookups = 0, evictions = 0, collisions = 0;
    for (int op = 0; op < 20000; op++) {
        int kind = (int)pick(100);
        if (kind < 25) { // alloc
            int b = ci_block_alloc(p);
            if (free_blocks.empty() && lru.empty()) {
                ASSERT_EQ(b, -1);
            } else if (!free_blocks.empty()) {
                ASSERT_EQ(free_blocks.count(b), 1u) << "alloc must take a free block first";
                free_blocks.erase(b);
                refcount[b] = 1;
                held.push_back(b);
            } else {
                ASSERT_EQ(b, lru.front()) << "alloc must evict the least recently released";
                lru.pop_front();
                committed.erase(content.at(b));
                content.erase(b);
                block_hash.erase(b);
                refcount[b] = 1;
                held.push_back(b);
                evictions++;
            }
        } else if (kind < 55) { // release
            if (held.empty()) continue;
            size_t i = pick(held.size());
            int b = held[i];
            held[i] = held.back();
            held.pop_back();
            ci_block_release(p, b);
            if (--refcount[b] == 0) {
                if (content.count(b))
                    lru.push_back(b);
                else
                    free_blocks.insert(b);
            }
        } else if (kind < 62) { // retain
            if (held.empty()) continue;
            int b = held[pick(held.size())];
            ci_block_retain(p, b);
            take_reference(b);
        } else if (kind < 77) { // commit a held block
            if (held.empty()) continue;
            int b = held[pick(held.size())];
            Key k = content.count(b) ? content.at(b) : random_key();
            uint64_t h = 0;
            ci_block_commit(p, b, k.first, k.second.data(), &h);
            ASSERT_EQ(h, ci_block_hash(k.first, k.second.data(), block_size));
            if (!content.count(b) && !committed.count(k)) {
                committed[k] = b;
                content[b] = k;
                block_hash[b] = h;
                if (parents.size() < 6)
                    parents.push_back(h);
                else
                    parents[pick(parents.size())] = h;
            }
        } else if (kind < 95) { // lookup
            Key k = random_key();
            uint64_t h = 0;
            int b = ci_block_lookup(p, k.first, k.second.data(), &h);
            lookups++;
            auto it = committed.find(k);
            if (it == committed.end()) {
                ASSERT_EQ(b, -1);
            } else {
                ASSERT_EQ(b, it->second);
                ASSERT_EQ(h, block_hash.at(b));
                take_reference(b);
                hits++;
            }
        } else { // a forced collision: another committed block's hash with these tokens
            if (content.empty()) continue;
            auto it = content.begin();
            std::advance(it, (long)pick(content.size()));
            Key k = random_key();
            if (k == it->second) continue;
            lookups++;
            collisions++;
            ASSERT_EQ(ci_block_lookup_hashed(p, block_hash.at(it->first), k.first, k.second.data()),
                      -1);
        }
        check_counts();
        if (HasFatalFailure()) return;
    }
    std::fprintf(stderr,
                 "[cinfer] %lld lookups, %lld hits, %lld evictions, %lld forced collisions\n",
                 (long long)lookups, (long long)hits, (long long)evictions, (long long)collisions);
    EXPECT_EQ(ci_block_pool_n_lookups(p), lookups);
    EXPECT_EQ(ci_block_pool_n_hits(p), hits);
    // the run reached every path that matters
    EXPECT_GT(hits, 100);
    EXPECT_GT(evictions, 10);
    EXPECT_GT(collisions, 10);

    for (int b : held) ci_block_release(p, b);
    EXPECT_EQ(ci_block_pool_n_used(p), 0);
    EXPECT_EQ(ci_block_pool_n_available(p), n_blocks);
    EXPECT_EQ(ci_block_pool_n_cached(p), (int)content.size());
}
