/* What the engine shows beyond include/cinfer.h, for its tests. */
#ifndef CINFER_ENGINE_H
#define CINFER_ENGINE_H

#include "../include/cinfer.h"

/* Decode-only steps padded to a power of two of sequences, as they are recorded on CUDA, on any
 * backend (where none records, they run eagerly): the padding rows are checked on the CPU. Call
 * before the first step. */
void ci_engine_pad_decode_steps(cinfer_engine *engine, int pad);

#endif
