/* Builds without CUDA (-DCINFER_CUDA=OFF, or no nvcc): there are no devices. */
#include "device.h"

int ci_cuda_devices(ci_device_info *devices, int max) {
    (void)devices;
    (void)max;
    return 0;
}

int ci_cuda_compiled(void) { return 0; }
