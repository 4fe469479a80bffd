/* Builds without NCCL (-DCINFER_NCCL=OFF, no CUDA, or no nccl.h and libnccl): the CPU
 * communicator is all there is, and asking for NCCL says how to get it. */
#include "comm.h"
#include "../common/error.h"

int ci_comm_nccl_compiled(void) { return 0; }

static cinfer_status not_built(void) {
    return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                   "this build of cinfer has no NCCL communicator (it was configured without "
                   "CUDA, with CINFER_NCCL=OFF, or without nccl.h and libnccl); rebuild with the "
                   "CUDA toolkit and NCCL installed");
}

cinfer_status ci_comm_nccl_unique_id(ci_comm_id *id) {
    (void)id;
    return not_built();
}

cinfer_status ci_comm_nccl_create(const ci_comm_id *id, int rank, int size, int device,
                                  ci_comm **out) {
    (void)id;
    (void)rank;
    (void)size;
    (void)device;
    *out = NULL;
    return not_built();
}
