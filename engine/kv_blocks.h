/* The KV block pool: which of n_blocks KV blocks (block_size positions each) are held, by how many
 * sequences, and which hold a committed prefix that a later sequence can share (prefix caching).
 * Host-side bookkeeping only: block ids index the device's paged KV cache, which lives elsewhere.
 *
 * A block is in exactly one of three states:
 *   used       refcount > 0: held by one or more sequences
 *   cached     refcount 0, holding a committed prefix: found by lookup, evicted by alloc (LRU)
 *   free       refcount 0, holding nothing: handed out by alloc before any cached block
 * so n_used + n_available == n_blocks, where n_available = free + cached.
 *
 * A committed block is named by a chained hash (ci_block_hash) of its parent block's hash and its
 * block_size tokens, as in vLLM's block pool; lookups compare the parent hash and the tokens too,
 * so a hash collision is a miss, never wrong KV. Every operation is O(1) expected; all memory is
 * allocated at create. Single-threaded: the engine thread owns the pool. Misuse (a bad block
 * index, releasing a block nobody holds) is a programming error and aborts (CI_ASSERT). */
#ifndef CINFER_KV_BLOCKS_H
#define CINFER_KV_BLOCKS_H

#include <stdint.h>

#include "../include/cinfer.h"

typedef struct ci_block_pool ci_block_pool;

/* n_blocks blocks of block_size positions. */
cinfer_status ci_block_pool_create(int n_blocks, int block_size, ci_block_pool **out);
void ci_block_pool_free(ci_block_pool *pool);

int ci_block_pool_n_blocks(const ci_block_pool *pool);
int ci_block_pool_block_size(const ci_block_pool *pool);
int ci_block_pool_n_available(const ci_block_pool *pool); /* alloc can hand out: free + cached */
int ci_block_pool_n_used(const ci_block_pool *pool);      /* refcount > 0 */
int ci_block_pool_n_cached(const ci_block_pool *pool);    /* refcount 0, committed: evictable */
int ci_block_refcount(const ci_block_pool *pool, int block);
/* Whether lookups can find this block (it holds a committed prefix), whatever its refcount. */
int ci_block_is_committed(const ci_block_pool *pool, int block);
/* Prefix-cache statistics since create: lookups made, and those that hit. */
int64_t ci_block_pool_n_lookups(const ci_block_pool *pool);
int64_t ci_block_pool_n_hits(const ci_block_pool *pool);

/* A fresh block with refcount 1 and no prefix: from the never-cached free blocks first, else evicts
 * the least recently released cached block (its prefix is forgotten); -1 when none is available. */
int ci_block_alloc(ci_block_pool *pool);
/* Takes one more reference to a block already held. */
void ci_block_retain(ci_block_pool *pool, int block);
/* Drops one reference; at 0 a block holding a committed prefix becomes evictable (most recently
 * released = last evicted), any other goes back to the free blocks. */
void ci_block_release(ci_block_pool *pool, int block);

/* The hash of a full block: of its parent block's hash (0 for a sequence's first block) and its
 * n_tokens token ids; splitmix64's finalizer mixes each step. */
uint64_t ci_block_hash(uint64_t parent_hash, const int32_t *tokens, int n_tokens);

/* Looks up a committed full block whose parent hash and block_size tokens equal these. On a hit:
 * takes a reference (a block at refcount 0 leaves the evictable list), counts a hit, writes the
 * block's hash to *hash, returns the block. -1 on a miss (*hash untouched). */
int ci_block_lookup(ci_block_pool *pool, uint64_t parent_hash, const int32_t *tokens,
                    uint64_t *hash);
/* Records that `block` (held by the caller, now full) holds these block_size tokens after the block
 * of parent_hash, so later lookups find it; writes its hash to *hash. If an equal block is already
 * committed, the existing one stays the one lookups find and this block stays uncommitted (it
 * returns to the free blocks when released). Committing an already committed block is a no-op
 * (its hash is written to *hash; the parent hash and tokens must be the ones it holds). */
void ci_block_commit(ci_block_pool *pool, int block, uint64_t parent_hash, const int32_t *tokens,
                     uint64_t *hash);

/* The two above with the hash already computed, for a caller that hashes a sequence's blocks once
 * (and for the tests, which force hash collisions through them). `hash` is meant to be
 * ci_block_hash(parent_hash, tokens, block_size); nothing goes wrong when it is not, since lookups
 * compare the parent hash and the tokens too. */
int ci_block_lookup_hashed(ci_block_pool *pool, uint64_t hash, uint64_t parent_hash,
                           const int32_t *tokens);
void ci_block_commit_hashed(ci_block_pool *pool, int block, uint64_t hash, uint64_t parent_hash,
                            const int32_t *tokens);

#endif
