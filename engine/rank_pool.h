/* The threads that run tensor-parallel ranks 1 .. tp-1 of a model whose ranks live in this process
 * (the CPU communicator: docs/TENSOR_PARALLEL.md). A session or an engine over such a model owns
 * one pool for its life: each step hands every follower rank the same job and runs rank 0's part
 * on the calling thread, so the ranks meet in their collectives; no thread is spawned per step.
 *
 * A job is fn(arg, rank) for rank 1 .. tp-1, one thread each; it reports through arg. */
#ifndef CINFER_RANK_POOL_H
#define CINFER_RANK_POOL_H

typedef struct ci_rank_pool ci_rank_pool;
typedef void (*ci_rank_job)(void *arg, int rank);

/* tp - 1 threads, waiting for jobs. NULL on failure (out of memory or threads). */
ci_rank_pool *ci_rank_pool_create(int tp);
/* Every follower starts fn(arg, rank); returns at once. One job at a time: ci_rank_pool_wait
 * before the next start. */
void ci_rank_pool_start(ci_rank_pool *pool, ci_rank_job fn, void *arg);
/* Returns when every follower has finished the job started last. */
void ci_rank_pool_wait(ci_rank_pool *pool);
/* Ends and joins the threads (after the last job was waited for). NULL is nothing. */
void ci_rank_pool_free(ci_rank_pool *pool);

#endif
