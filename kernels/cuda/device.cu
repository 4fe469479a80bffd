// Device discovery for builds with CUDA. A machine with the toolkit but no GPU (or no driver)
// has zero devices; that is not an error.
#include <stdio.h>
#include <string.h>

#include "../../common/cuda_check.h"

extern "C" {
#include "../device.h"
}

extern "C" int ci_cuda_devices(cinfer_device_info *devices, int max) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    for (int i = 0; i < count && i < max; i++) {
        cudaDeviceProp prop;
        cinfer_device_info *info = &devices[i];
        memset(info, 0, sizeof *info);
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        snprintf(info->name, sizeof info->name, "%s", prop.name);
        info->compute_major = prop.major;
        info->compute_minor = prop.minor;
        int previous = 0;
        CUDA_CHECK(cudaGetDevice(&previous));
        if (cudaSetDevice(i) == cudaSuccess) cudaMemGetInfo(&info->free_bytes, &info->total_bytes);
        CUDA_CHECK(cudaSetDevice(previous));
    }
    return count;
}

extern "C" int ci_cuda_compiled(void) { return 1; }
