/* One tensor-parallel rank's model (docs/TENSOR_PARALLEL.md): its part of a checkpoint, read from
 * the memory-mapped files and nothing more, with its own config, bound to the communicator its
 * forward pass sums and gathers through. Not in the public API yet: sessions, the engine and
 * `--tp` come with the integration. */
#ifndef CINFER_MODEL_SHARD_H
#define CINFER_MODEL_SHARD_H

#include "../include/cinfer.h"
#include "../kernels/comm.h"

/* Loads rank comm->rank of comm->size of the checkpoint in dir (models/shard.h says what a rank
 * holds): CINFER_ERR_ARGUMENT naming the numbers when comm->size cannot divide the model. On CUDA
 * the rank's tensors go to options->device, whose free memory is what must hold them. The model
 * keeps comm (not owned: free the model first) and its forward pass must run in lockstep with
 * every other rank's. cinfer_model_free frees it. */
cinfer_status ci_model_load_shard(const char *dir, const cinfer_load_options *options,
                                  ci_comm *comm, cinfer_model **out);

/* The same rank of the random-weight model cinfer_model_load_random draws from config_path and
 * seed: the rank draws only its part, each element the value the whole model holds there, so the
 * ranks together are that model split. CPU backend only (the GPU draws whole tensors). */
cinfer_status ci_model_load_random_shard(const char *config_path,
                                         const cinfer_load_options *options, uint64_t seed,
                                         ci_comm *comm, cinfer_model **out);

#endif
