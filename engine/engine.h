/* What the engine shows beyond include/cinfer.h, for its tests. */
#ifndef CINFER_ENGINE_H
#define CINFER_ENGINE_H

#include "../include/cinfer.h"
#include "tp_ranks.h"

/* Decode-only steps padded to a power of two of sequences, as they are recorded on CUDA, on any
 * backend (where none records, they run eagerly): the padding rows are checked on the CPU. Call
 * before the first step. */
void ci_engine_pad_decode_steps(cinfer_engine *engine, int pad);

/* A follower rank's engine (tp_ranks.h): executes the step rank 0's engine sent. */
cinfer_status ci_engine_follow_step(cinfer_engine *engine, ci_tp_reader *r);
/* The KV pool's bytes, the followers' included on rank 0. */
int64_t ci_engine_kv_bytes(const cinfer_engine *engine);

#endif
