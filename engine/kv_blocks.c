/* The KV block pool (kv_blocks.h): reference counts, a stack of free blocks, an LRU list of cached
 * blocks, and a hash table of committed blocks. The lists are intrusive (indices in the block
 * records), so nothing is allocated after create. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "kv_blocks.h"
#include "../common/error.h"
#include "../common/splitmix.h"

#define NONE (-1)

typedef struct {
    int refcount;
    int committed;   /* in the hash table: lookups find it */
    int lru_prev;    /* cached blocks only: toward the least recently released */
    int lru_next;    /*                     toward the most recently released */
    int chain_next;  /* committed blocks only: the next block of its hash bucket */
    uint64_t hash;   /* committed blocks only */
    uint64_t parent; /* committed blocks only: the hash of the block before it */
} ci_block;

struct ci_block_pool {
    int n_blocks, block_size;
    ci_block *blocks; /* [n_blocks] */
    int32_t *tokens;  /* [n_blocks, block_size]: the tokens of committed blocks */
    int *free_stack;  /* [n_blocks]: blocks holding nothing, n_free of them, top last */
    int n_free;
    int lru_head; /* the cached block alloc evicts first */
    int lru_tail; /* the most recently released cached block */
    int n_cached;
    int n_used;
    int *buckets; /* [bucket_mask + 1]: first committed block of each bucket, or NONE */
    uint64_t bucket_mask;
    int64_t n_lookups, n_hits;
};

/* ---- the lists and the table ----------------------------------------------------------------- */

static void lru_push_tail(ci_block_pool *p, int b) {
    ci_block *blk = &p->blocks[b];
    blk->lru_prev = p->lru_tail;
    blk->lru_next = NONE;
    if (p->lru_tail != NONE)
        p->blocks[p->lru_tail].lru_next = b;
    else
        p->lru_head = b;
    p->lru_tail = b;
    p->n_cached++;
}

static void lru_remove(ci_block_pool *p, int b) {
    ci_block *blk = &p->blocks[b];
    if (blk->lru_prev != NONE)
        p->blocks[blk->lru_prev].lru_next = blk->lru_next;
    else
        p->lru_head = blk->lru_next;
    if (blk->lru_next != NONE)
        p->blocks[blk->lru_next].lru_prev = blk->lru_prev;
    else
        p->lru_tail = blk->lru_prev;
    blk->lru_prev = blk->lru_next = NONE;
    p->n_cached--;
}

static int *bucket_of(ci_block_pool *p, uint64_t hash) {
    return &p->buckets[hash & p->bucket_mask];
}

static const int32_t *tokens_of(const ci_block_pool *p, int b) {
    return p->tokens + (size_t)b * (size_t)p->block_size;
}

/* The committed block equal to this one (hash, parent hash and tokens), or NONE. */
static int table_find(ci_block_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens) {
    for (int b = *bucket_of(p, hash); b != NONE; b = p->blocks[b].chain_next) {
        const ci_block *blk = &p->blocks[b];
        if (blk->hash == hash && blk->parent == parent &&
            memcmp(tokens_of(p, b), tokens, (size_t)p->block_size * sizeof(int32_t)) == 0)
            return b;
    }
    return NONE;
}

static void table_remove(ci_block_pool *p, int b) {
    int *link = bucket_of(p, p->blocks[b].hash);
    while (*link != b) {
        CI_ASSERT(*link != NONE); /* a committed block is always in its bucket */
        link = &p->blocks[*link].chain_next;
    }
    *link = p->blocks[b].chain_next;
    p->blocks[b].chain_next = NONE;
    p->blocks[b].committed = 0;
}

static void check_block(const ci_block_pool *p, int b) {
    CI_ASSERT(p != NULL);
    CI_ASSERT(b >= 0 && b < p->n_blocks);
}

/* ---- create, free, counts -------------------------------------------------------------------- */

cinfer_status ci_block_pool_create(int n_blocks, int block_size, ci_block_pool **out) {
    *out = NULL;
    if (n_blocks <= 0 || block_size <= 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "KV block pool: %d blocks of %d positions; both must be positive", n_blocks,
                       block_size);
    if (n_blocks > INT_MAX / 2)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "KV block pool: %d blocks is more than %d", n_blocks,
                       INT_MAX / 2);
    ci_block_pool *p = calloc(1, sizeof(*p));
    CI_CHECK_ALLOC(p, sizeof(*p));
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    /* at least 2 buckets per block keeps the chains short (load factor <= 1/2) */
    size_t n_buckets = 1;
    while (n_buckets < 2 * (size_t)n_blocks) n_buckets *= 2;
    p->bucket_mask = n_buckets - 1;
    size_t token_bytes = (size_t)n_blocks * (size_t)block_size * sizeof(int32_t);
    p->blocks = malloc((size_t)n_blocks * sizeof(ci_block));
    p->tokens = malloc(token_bytes);
    p->free_stack = malloc((size_t)n_blocks * sizeof(int));
    p->buckets = malloc(n_buckets * sizeof(int));
    if (!p->blocks || !p->tokens || !p->free_stack || !p->buckets) {
        ci_block_pool_free(p);
        return CI_FAIL(CINFER_ERR_MEMORY,
                       "KV block pool: out of memory for %d blocks of %d positions", n_blocks,
                       block_size);
    }
    for (int b = 0; b < n_blocks; b++) {
        p->blocks[b] = (ci_block){.lru_prev = NONE, .lru_next = NONE, .chain_next = NONE};
        p->free_stack[b] = n_blocks - 1 - b; /* block 0 on top: handed out first */
    }
    p->n_free = n_blocks;
    for (size_t i = 0; i < n_buckets; i++) p->buckets[i] = NONE;
    p->lru_head = p->lru_tail = NONE;
    *out = p;
    return CINFER_OK;
}

void ci_block_pool_free(ci_block_pool *pool) {
    if (!pool) return;
    free(pool->blocks);
    free(pool->tokens);
    free(pool->free_stack);
    free(pool->buckets);
    free(pool);
}

int ci_block_pool_n_blocks(const ci_block_pool *pool) { return pool->n_blocks; }
int ci_block_pool_block_size(const ci_block_pool *pool) { return pool->block_size; }
int ci_block_pool_n_available(const ci_block_pool *pool) { return pool->n_free + pool->n_cached; }
int ci_block_pool_n_used(const ci_block_pool *pool) { return pool->n_used; }
int ci_block_pool_n_cached(const ci_block_pool *pool) { return pool->n_cached; }
int64_t ci_block_pool_n_lookups(const ci_block_pool *pool) { return pool->n_lookups; }
int64_t ci_block_pool_n_hits(const ci_block_pool *pool) { return pool->n_hits; }

int ci_block_refcount(const ci_block_pool *pool, int block) {
    check_block(pool, block);
    return pool->blocks[block].refcount;
}

int ci_block_is_committed(const ci_block_pool *pool, int block) {
    check_block(pool, block);
    return pool->blocks[block].committed;
}

/* ---- references ------------------------------------------------------------------------------ */

int ci_block_alloc(ci_block_pool *pool) {
    int b;
    if (pool->n_free > 0) {
        b = pool->free_stack[--pool->n_free];
    } else if (pool->lru_head != NONE) {
        b = pool->lru_head; /* evict: its prefix is forgotten */
        lru_remove(pool, b);
        table_remove(pool, b);
    } else {
        return NONE;
    }
    CI_ASSERT(pool->blocks[b].refcount == 0 && !pool->blocks[b].committed);
    pool->blocks[b].refcount = 1;
    pool->n_used++;
    return b;
}

void ci_block_retain(ci_block_pool *pool, int block) {
    check_block(pool, block);
    CI_ASSERT(pool->blocks[block].refcount > 0); /* only a block already held */
    pool->blocks[block].refcount++;
}

void ci_block_release(ci_block_pool *pool, int block) {
    check_block(pool, block);
    ci_block *blk = &pool->blocks[block];
    CI_ASSERT(blk->refcount > 0);
    if (--blk->refcount > 0) return;
    pool->n_used--;
    if (blk->committed)
        lru_push_tail(pool, block);
    else
        pool->free_stack[pool->n_free++] = block;
}

/* ---- prefix caching -------------------------------------------------------------------------- */

uint64_t ci_block_hash(uint64_t parent_hash, const int32_t *tokens, int n_tokens) {
    /* each step is splitmix64 (a bijection of its state) of the running hash xor one token, so
     * for one parent two blocks that differ in one token never collide; the count goes last so
     * that a block and its zero-padded extension differ */
    uint64_t h = parent_hash;
    for (int i = 0; i < n_tokens; i++) {
        uint64_t state = h ^ (uint64_t)(uint32_t)tokens[i];
        h = ci_splitmix64(&state);
    }
    uint64_t state = h ^ ((uint64_t)(uint32_t)n_tokens << 32);
    return ci_splitmix64(&state);
}

int ci_block_lookup_hashed(ci_block_pool *pool, uint64_t hash, uint64_t parent_hash,
                           const int32_t *tokens) {
    pool->n_lookups++;
    int b = table_find(pool, hash, parent_hash, tokens);
    if (b == NONE) return NONE;
    pool->n_hits++;
    ci_block *blk = &pool->blocks[b];
    if (blk->refcount == 0) {
        lru_remove(pool, b);
        pool->n_used++;
    }
    blk->refcount++;
    return b;
}

int ci_block_lookup(ci_block_pool *pool, uint64_t parent_hash, const int32_t *tokens,
                    uint64_t *hash) {
    uint64_t h = ci_block_hash(parent_hash, tokens, pool->block_size);
    int b = ci_block_lookup_hashed(pool, h, parent_hash, tokens);
    if (b != NONE) *hash = h;
    return b;
}

void ci_block_commit_hashed(ci_block_pool *pool, int block, uint64_t hash, uint64_t parent_hash,
                            const int32_t *tokens) {
    check_block(pool, block);
    ci_block *blk = &pool->blocks[block];
    CI_ASSERT(blk->refcount > 0); /* the caller holds it */
    size_t bytes = (size_t)pool->block_size * sizeof(int32_t);
    if (blk->committed) { /* a no-op, but only for the prefix it already holds */
        CI_ASSERT(blk->hash == hash && blk->parent == parent_hash &&
                  memcmp(tokens_of(pool, block), tokens, bytes) == 0);
        return;
    }
    if (table_find(pool, hash, parent_hash, tokens) != NONE) return; /* the first one stays */
    blk->committed = 1;
    blk->hash = hash;
    blk->parent = parent_hash;
    memcpy(pool->tokens + (size_t)block * (size_t)pool->block_size, tokens, bytes);
    int *bucket = bucket_of(pool, hash);
    blk->chain_next = *bucket;
    *bucket = block;
}

void ci_block_commit(ci_block_pool *pool, int block, uint64_t parent_hash, const int32_t *tokens,
                     uint64_t *hash) {
    uint64_t h = ci_block_hash(parent_hash, tokens, pool->block_size);
    ci_block_commit_hashed(pool, block, h, parent_hash, tokens);
    *hash = h;
}
