// Warp-level tensor-core and asynchronous-copy instructions (sm_80+), each behind one function so
// that the kernels read as their algorithm, and so that tests/cuda_emu/cuda_emu.h can stand in
// for them on the CPU (it implements each from the PTX ISA's definition, independently of the
// kernels that use them).
//
// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 (PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type"). With lane = 0..31,
// group = lane / 4 and quad = lane % 4; each uint32_t holds two 16-bit elements, the lower column
// (A, C) or lower k (B) in the low half:
//   A (16×16, row-major, M×K): a[0] = A[group    ][2·quad .. 2·quad+1]
//                              a[1] = A[group + 8][2·quad .. 2·quad+1]
//                              a[2] = A[group    ][2·quad+8 .. 2·quad+9]
//                              a[3] = A[group + 8][2·quad+8 .. 2·quad+9]
//   B (16×8, K×N, "col"):      b[0] = B[2·quad .. 2·quad+1  ][group]
//                              b[1] = B[2·quad+8 .. 2·quad+9][group]
//   C, D (16×8, f32):          c[0], c[1] = C[group    ][2·quad], C[group    ][2·quad+1]
//                              c[2], c[3] = C[group + 8][2·quad], C[group + 8][2·quad+1]
//
// ldmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16: matrix i (i < count) is given by the row
// addresses of lanes 8i .. 8i+7 (row r of matrix i at the address lane 8i + r holds, 16 bytes
// each); lane l receives in register i the elements [l / 4][2·(l % 4) .. 2·(l % 4)+1] of
// matrix i. With .trans, it receives [2·(l % 4)][l / 4] and [2·(l % 4)+1][l / 4] instead.
// For .x1 and .x2 the addresses of lanes 8·count .. 31 are ignored (but must be valid to form).
#ifndef CINFER_TENSOR_CORE_CUH
#define CINFER_TENSOR_CORE_CUH

#include "kernel_api.cuh"

// The 16-bit element types the tensor cores take, and how two floats pack into one register.
template <typename T> struct mma_type;
template <> struct mma_type<__nv_bfloat16> {
    static constexpr bool is_bf16 = true;
};
template <> struct mma_type<__half> {
    static constexpr bool is_bf16 = false;
};

// Two floats as two T in one register, lo in the low 16 bits (round to nearest even).
template <typename T> __device__ __forceinline__ uint32_t ci_pack2(float lo, float hi) {
    const T l = ci_from_float<T>(lo), h = ci_from_float<T>(hi);
    uint16_t lo_bits, hi_bits;
    memcpy(&lo_bits, &l, 2);
    memcpy(&hi_bits, &h, 2);
    return (uint32_t)lo_bits | ((uint32_t)hi_bits << 16);
}

#if !defined(CINFER_CUDA_EMULATION)

// d += A·B for one warp; A, B in T (bf16 or f16), C and D in f32.
template <typename T>
__device__ __forceinline__ void ci_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    if constexpr (mma_type<T>::is_bf16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

__device__ __forceinline__ uint32_t ci_shared_address(const void *shared) {
    return (uint32_t)__cvta_generic_to_shared(shared);
}

// r[i] = this lane's part of matrix i (see above); row_address is this lane's row.
__device__ __forceinline__ void ci_ldmatrix_x4(uint32_t r[4], const void *row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ci_shared_address(row_address)));
}
__device__ __forceinline__ void ci_ldmatrix_x4_trans(uint32_t r[4], const void *row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ci_shared_address(row_address)));
}
__device__ __forceinline__ void ci_ldmatrix_x2(uint32_t r[2], const void *row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(ci_shared_address(row_address)));
}
__device__ __forceinline__ void ci_ldmatrix_x2_trans(uint32_t r[2], const void *row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(ci_shared_address(row_address)));
}

// 16 bytes global -> shared without passing through registers; src_bytes < 16 zero-fills the rest
// (0 reads nothing: for rows past the end of a tensor). Completes in groups: commit closes a group,
// wait<N> blocks until at most N groups are still in flight (then __syncthreads to share them).
// The "memory" clobbers tell the compiler that these write shared memory behind its back (the
// operands are a 32-bit shared address and a global one, not memory operands): without them it may
// move ordinary loads and stores of the same shared memory across the copy or the wait. Every use
// here is followed by __syncthreads, itself a compiler barrier, so this is belt and braces.
__device__ __forceinline__ void ci_cp_async_16(void *shared_dst, const void *global_src,
                                               int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                     ci_shared_address(shared_dst)),
                 "l"(global_src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void ci_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void ci_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif // !CINFER_CUDA_EMULATION
#endif
