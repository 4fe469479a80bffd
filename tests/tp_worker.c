/* A tensor-parallel worker process for the tests (tests/test_tensor_parallel_api.cpp): what the
 * cinfer program's launcher runs in each worker, through the public API alone.
 *
 *   tp_worker DIR RANK TP ADDRESS [TIMEOUT_SECONDS]
 *
 * Exit status 0 once rank 0 freed its model; 1 with the error on stderr otherwise. */
#include <stdio.h>
#include <stdlib.h>

#include "cinfer.h"

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: tp_worker DIR RANK TP ADDRESS [TIMEOUT_SECONDS]\n");
        return 2;
    }
    cinfer_load_options options = {0};
    options.backend = CINFER_BACKEND_CPU;
    options.n_threads = 1;
    options.tensor_parallel = atoi(argv[3]);
    options.tp_address = argv[4];
    if (argc > 5) options.tp_timeout_seconds = atof(argv[5]);
    if (cinfer_tp_worker_run(argv[1], &options, atoi(argv[2])) != CINFER_OK) {
        fprintf(stderr, "tp_worker rank %s: %s\n", argv[2], cinfer_last_error());
        return 1;
    }
    return 0;
}
