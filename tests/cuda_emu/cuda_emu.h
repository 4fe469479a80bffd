// A CPU emulator for cinfer's CUDA kernels: include this header before kernels/cuda/kernel_api.cuh
// (and the kernel headers) in a host C++17 translation unit, and the kernels written against that
// vocabulary compile and run unchanged on the CPU, so that tests check their logic against the CPU
// reference ops on machines without a GPU.
//
// How it runs a launch (CI_LAUNCH, synchronous):
//   - every CUDA thread is a fiber with its own stack, allocated once per launch and reused by
//     every block (a context made anew per thread and block; on x86-64 a hand-written stack switch,
//     elsewhere makecontext/swapcontext; see switch_stack);
//   - blocks run one after another; inside a block, fibers run round-robin, each until it finishes
//     or waits (at __syncthreads or at a warp collective), and switches straight to the next fiber
//     that can run (ascending thread order in even blocks, descending in odd ones, so that a
//     missing barrier shows whichever neighbour a thread reads); when none can, control goes back
//     to the launch, which either moves on to the next block (all threads finished) or aborts
//     naming the block and where its threads wait;
//   - __syncthreads is a block-wide barrier: all threads at the same __syncthreads call site;
//   - warp collectives (shuffles, mma, ldmatrix, __syncwarp) are a rendezvous of the 32 lanes of a
//     warp (lane = linear thread index % 32): each lane deposits its operands, waits until all 32
//     arrived at the same kind of collective, then computes its own result from the operands of
//     all 32 (mma and ldmatrix from the PTX ISA's definitions, independently of the kernels);
//   - __shared__ arrays are function-local statics (one block runs at a time); the dynamic shared
//     buffer (CI_DYNAMIC_SHARED) is refilled with 0xFF bytes before every block, so that reading it
//     before writing shows up as NaN in f32, bf16 and f16;
//   - cp.async copies are recorded per thread and performed lazily by that thread's
//     ci_cp_async_wait<N>, so a kernel that reads shared memory before waiting sees stale bytes.
//
// What it checks, aborting with a message on stderr: the launch limits of an H100/H200 (threads per
// block, grid dimensions, dynamic shared memory and the opt-in above 48 KiB), a block whose threads
// can never all pass a barrier (some returned early, or they wait at different barriers or
// collectives), warp divergence at a collective, partial shuffle masks, misaligned ldmatrix,
// cp.async and 16-byte load (ci_load_16) addresses, cp.async copies never waited for.
//
// What it cannot check: speed, the memory model, races that the barriers do not order (fibers only
// switch at barriers and collectives, so a missing __syncthreads between two phases may go
// unnoticed when the same threads write and read), shared memory capacity of static __shared__
// arrays, and whether an address passed to ldmatrix or cp.async is in shared memory at all.
// Use, in a test (tests get -I<repo root>):
//   #include "tests/cuda_emu/cuda_emu.h"        // first
//   #include "kernels/cuda/attention_flash.cuh" // any kernel header written to kernel_api.cuh
//   ... attention_flash_launch<__nv_bfloat16>(params, nullptr); // runs before it returns
// Pointers are plain host memory. Options: -DCI_EMU_UCONTEXT forces makecontext/swapcontext.
#ifndef CINFER_CUDA_EMU_H
#define CINFER_CUDA_EMU_H

#define CINFER_CUDA_EMULATION 1

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CI_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CI_EMU_ASAN 1
#endif
#endif
#if defined(CI_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// ---- qualifiers ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Function-local arrays shared by every fiber of the block that runs (one block at a time).
#define __shared__ static
// __restrict__ is a GNU C++ keyword already.

// ---- built-in types -----------------------------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct CUstream_st;
typedef CUstream_st *cudaStream_t; // opaque, as in CUDA; launches ignore it (they are synchronous)

constexpr int warpSize = 32;

// ---- 16-bit floating-point storage types --------------------------------------------------------
// Plain 2-byte structs (trivially copyable, no conversions): kernels convert through
// ci_to_float/ci_from_float, which call the functions below.
struct __nv_bfloat16 {
    unsigned short __x;
};
struct __half {
    unsigned short __x;
};
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__half) == 2, "16-bit types must be 2 bytes");

namespace ci_emu {
inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// float -> bf16, round to nearest even; NaN stays NaN (quiet, sign kept); overflow gives ±inf.
inline uint16_t bf16_bits_from_float(float f) {
    const uint32_t u = float_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);
    const uint32_t lsb = (u >> 16) & 1u; // ties go to the even neighbour
    return (uint16_t)((u + 0x7FFFu + lsb) >> 16);
}
inline float float_from_bf16_bits(uint16_t h) { return bits_float((uint32_t)h << 16); }

// float -> f16, round to nearest even, by bit manipulation (no _Float16: clang 14 lacks it on
// x86-64). Subnormal results are rounded by the FPU itself: adding 0.5f aligns the f16 subnormal
// grid (steps of 2^-24) with the float's last mantissa bit, and the float addition rounds to
// nearest even (the default rounding mode; FTZ/DAZ must be off, as they are without -ffast-math).
inline uint16_t f16_bits_from_float(float f) {
    uint32_t u = float_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7FFFFFFFu;
    if (u >= 0x7F800000u) // inf or NaN (quiet, top payload bits kept)
        return (uint16_t)(sign | (u > 0x7F800000u ? 0x7E00u | ((u >> 13) & 0x3FFu) : 0x7C00u));
    if (u >= 0x47800000u) return (uint16_t)(sign | 0x7C00u); // >= 65536: inf
    if (u < 0x38800000u) {                                   // below 2^-14: subnormal or zero
        const float shifted = bits_float(u) + 0.5f;
        return (uint16_t)(sign | (uint16_t)(float_bits(shifted) - float_bits(0.5f)));
    }
    const uint32_t lsb = (u >> 13) & 1u;
    u += 0xC8000FFFu + lsb; // rebias the exponent (15 - 127) and round; a carry may reach inf
    return (uint16_t)(sign | (u >> 13));
}
inline float float_from_f16_bits(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    if (exponent == 0) { // zero or subnormal: mantissa · 2^-24, exact in float
        const float magnitude = (float)mantissa * 0x1p-24f;
        return bits_float(sign | float_bits(magnitude));
    }
    if (exponent == 31) return bits_float(sign | 0x7F800000u | (mantissa << 13));
    return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}
} // namespace ci_emu

inline __nv_bfloat16 __float2bfloat16(float f) { return {ci_emu::bf16_bits_from_float(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return ci_emu::float_from_bf16_bits(h.__x); }
inline __half __float2half(float f) { return {ci_emu::f16_bits_from_float(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return ci_emu::float_from_f16_bits(h.__x); }

// ---- math beyond <cmath> ------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }

// ---- the emulator -------------------------------------------------------------------------------
namespace ci_emu {

[[noreturn]] __attribute__((format(printf, 1, 2))) inline void fail(const char *format, ...) {
    fflush(stdout);
    fputs("cuda_emu: ", stderr);
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

// Limits of an H100/H200 (compute capability 9.0) that a launch must respect.
constexpr unsigned max_threads_per_block = 1024;
constexpr unsigned max_block_x = 1024, max_block_y = 1024, max_block_z = 64;
constexpr unsigned max_grid_x = 2147483647u, max_grid_y = 65535, max_grid_z = 65535;
constexpr size_t default_dynamic_shared_limit = 48 * 1024; // without the opt-in attribute
constexpr size_t max_dynamic_shared = 232448;              // 227 KiB, with the opt-in

// Fiber stacks: kernels keep their "registers" (fragments, accumulators) on them. AddressSanitizer
// surrounds every local with redzones, so it needs more.
#if defined(CI_EMU_ASAN)
constexpr size_t fiber_stack_bytes = 256 * 1024;
#else
constexpr size_t fiber_stack_bytes = 64 * 1024;
#endif

// How execution moves between fibers. On x86-64, a dozen instructions that save the callee-saved
// registers on the old stack and load them from the new one (as Boost.Context does): glibc's
// swapcontext makes a system call per switch (the signal mask), and under AddressSanitizer its
// interceptor clears the shadow of the whole target stack at every switch, which made a launch
// 40x slower. Elsewhere, or with -DCI_EMU_UCONTEXT, makecontext/swapcontext.
#if defined(__x86_64__) && !defined(CI_EMU_UCONTEXT)
#define CI_EMU_STACK_SWITCH 1
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp, and resumes the context whose stack pointer is load_sp.
__attribute__((naked, noinline)) inline void switch_stack(void ** /*save_sp*/, void * /*load_sp*/) {
    __asm__ volatile("pushq %rbp\n\t"
                     "pushq %rbx\n\t"
                     "pushq %r12\n\t"
                     "pushq %r13\n\t"
                     "pushq %r14\n\t"
                     "pushq %r15\n\t"
                     "subq $8, %rsp\n\t"
                     "stmxcsr (%rsp)\n\t"
                     "fnstcw 4(%rsp)\n\t"
                     "movq %rsp, (%rdi)\n\t"
                     "movq %rsi, %rsp\n\t"
                     "ldmxcsr (%rsp)\n\t"
                     "fldcw 4(%rsp)\n\t"
                     "addq $8, %rsp\n\t"
                     "popq %r15\n\t"
                     "popq %r14\n\t"
                     "popq %r13\n\t"
                     "popq %r12\n\t"
                     "popq %rbx\n\t"
                     "popq %rbp\n\t"
                     "ret\n\t");
}
#endif

// A place execution can be switched to and from: a fiber, or the launch itself (the scheduler).
struct context {
#if defined(CI_EMU_STACK_SWITCH)
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
    const void *stack_bottom = nullptr; // for AddressSanitizer's fiber annotations
    size_t stack_size = 0;
    void *fake_stack = nullptr;
};

enum class fiber_state : uint8_t { ready, at_barrier, at_collective, finished };

enum class collective_kind : uint8_t {
    shfl_idx,
    shfl_xor,
    shfl_down,
    shfl_up,
    syncwarp,
    mma_bf16,
    mma_f16,
    ldmatrix_x1,
    ldmatrix_x2,
    ldmatrix_x4,
    ldmatrix_x1_trans,
    ldmatrix_x2_trans,
    ldmatrix_x4_trans,
};
inline const char *collective_name(collective_kind kind) {
    switch (kind) {
    case collective_kind::shfl_idx: return "__shfl_sync";
    case collective_kind::shfl_xor: return "__shfl_xor_sync";
    case collective_kind::shfl_down: return "__shfl_down_sync";
    case collective_kind::shfl_up: return "__shfl_up_sync";
    case collective_kind::syncwarp: return "__syncwarp";
    case collective_kind::mma_bf16: return "ci_mma_16816<__nv_bfloat16>";
    case collective_kind::mma_f16: return "ci_mma_16816<__half>";
    case collective_kind::ldmatrix_x1: return "ldmatrix.x1";
    case collective_kind::ldmatrix_x2: return "ci_ldmatrix_x2";
    case collective_kind::ldmatrix_x4: return "ci_ldmatrix_x4";
    case collective_kind::ldmatrix_x1_trans: return "ldmatrix.x1.trans";
    case collective_kind::ldmatrix_x2_trans: return "ci_ldmatrix_x2_trans";
    case collective_kind::ldmatrix_x4_trans: return "ci_ldmatrix_x4_trans";
    }
    return "?";
}

// One cp.async recorded by a thread, performed when the thread waits for its group.
struct async_copy {
    void *dst;
    const void *src;
    int src_bytes;
    unsigned group; // the number of groups this thread had committed when it issued the copy
    const char *file;
    int line;
};

struct fiber {
    context ctx;
    uint3 thread_idx;
    unsigned linear, lane, warp;
    fiber_state state;
    const char *wait_file; // where it waits (barrier or collective), for messages
    int wait_line;
    collective_kind wait_kind;
    unsigned collectives; // warp collectives entered so far: selects the rendezvous buffer
    unsigned groups_committed;
    std::vector<async_copy> copies;
};

// What one lane brings to a warp collective.
struct lane_operands {
    uint32_t word[6];    // shuffle: word[0]; mma: a[0..3] then b[0..1]
    const void *address; // ldmatrix: this lane's row
    int param;           // shuffle: source lane, xor mask or delta
};

// One rendezvous of a warp. A lane can be at most one collective ahead of the slowest lane still
// reading the operands of the previous one, so two buffers, chosen by the collective's parity, let
// every lane read all 32 deposits after the rendezvous without copying them.
struct warp_rendezvous {
    unsigned arrived;
    collective_kind kind;
    unsigned first_lane;
    const char *file;
    int line;
    lane_operands lane[32];
    // mma: A and B as floats, decoded by the first lane that reads them after the rendezvous
    bool decoded;
    float a[16][16], b[16][8];
};
struct warp_state {
    warp_rendezvous buffer[2];
};

struct emulator {
    context scheduler;
    fiber *current = nullptr; // the fiber that runs; null outside a kernel
    context *switched_from = nullptr;
    std::vector<fiber> fibers;
    std::vector<warp_state> warps;
    // the block-wide barrier
    unsigned barrier_arrived = 0;
    const char *barrier_file = nullptr;
    int barrier_line = 0;
    unsigned barrier_first_thread = 0;
    // the launch
    const char *kernel_name = nullptr;
    const char *launch_file = nullptr;
    int launch_line = 0;
    dim3 grid_dim, block_dim;
    uint3 block_idx{0, 0, 0};
    unsigned threads_per_block = 0;
    bool descending = false; // this block's fibers run from the last thread to the first
    unsigned char *dynamic_shared = nullptr;
    size_t dynamic_shared_bytes = 0;
    void (*run_thread)(void *) = nullptr; // calls the kernel with the launch's arguments
    void *run_thread_arg = nullptr;
    std::map<const void *, size_t> dynamic_shared_allowed; // per kernel, by ci_allow_dynamic_shared
};
inline emulator g;

inline fiber *current_fiber(const char *what) {
    if (!g.current) fail("%s called outside a kernel launched with CI_LAUNCH", what);
    return g.current;
}

// ---- switching between fibers -------------------------------------------------------------------
// Every switch tells AddressSanitizer which stack execution moves to (start_switch_fiber) and, once
// back, where it came from (finish_switch_fiber), so that it neither reports false stack overflows
// nor misses real ones; a finished fiber passes a null fake stack, as its frames are gone.
inline void after_switch(context *self) {
#if defined(CI_EMU_ASAN)
    context *from = g.switched_from;
    __sanitizer_finish_switch_fiber(self ? self->fake_stack : nullptr, &from->stack_bottom,
                                    &from->stack_size);
#else
    (void)self;
#endif
}

// Not inlined: swapcontext returns twice, which would make the compiler distrust (and warn about)
// every local of the caller.
__attribute__((noinline)) inline void switch_context(context *from, context *to,
                                                     bool from_finished) {
    g.switched_from = from;
#if defined(CI_EMU_ASAN)
    __sanitizer_start_switch_fiber(from_finished ? nullptr : &from->fake_stack, to->stack_bottom,
                                   to->stack_size);
#else
    (void)from_finished;
#endif
#if defined(CI_EMU_STACK_SWITCH)
    // The compiler must treat the switch as reading and writing all memory: other fibers run
    // inside it. The naked switch_stack cannot say so itself (no extended asm there), and GCC's
    // interprocedural analysis (modref) would otherwise conclude it touches nothing and carry
    // loads of shared memory across __syncthreads().
    __asm__ volatile("" ::: "memory");
    switch_stack(&from->sp, to->sp);
    __asm__ volatile("" ::: "memory");
#else
    if (swapcontext(&from->uc, &to->uc) != 0) fail("swapcontext failed");
#endif
    after_switch(from);
}

// The next fiber after `self` (round-robin) that can run, or null.
// The order alternates from block to block (ascending in even blocks, descending in odd ones), so
// that a missing barrier shows up whichever neighbour's data a thread reads: the fiber that runs
// first reads its neighbour's slot before the neighbour has written it.
inline fiber *next_ready(fiber *self) {
    const size_t n = g.fibers.size();
    size_t i = (size_t)(self - g.fibers.data());
    for (size_t step = 0; step < n; step++) {
        if (g.descending)
            i = i == 0 ? n - 1 : i - 1;
        else
            i = i + 1 == n ? 0 : i + 1;
        if (g.fibers[i].state == fiber_state::ready) return &g.fibers[i];
    }
    return nullptr;
}

// Leaves `self` (which waits or has finished) for the next fiber that can run, or for the launch
// when none can; returns when another fiber has made `self` ready again.
inline void switch_away(fiber *self) {
    const bool finished = self->state == fiber_state::finished;
    fiber *next = next_ready(self);
    g.current = next;
    switch_context(&self->ctx, next ? &next->ctx : &g.scheduler, finished);
    g.current = self;
}

inline void thread_exit(fiber *self) {
    if (!self->copies.empty()) {
        const async_copy &c = self->copies.front();
        fail("kernel '%s' block (%u,%u,%u) thread %u returned with %zu cp.async copies never "
             "waited for (the first issued at %s:%d): call ci_cp_async_commit() and "
             "ci_cp_async_wait<0>() before returning",
             g.kernel_name, g.block_idx.x, g.block_idx.y, g.block_idx.z, self->linear,
             self->copies.size(), c.file, c.line);
    }
    self->state = fiber_state::finished;
    switch_away(self); // never comes back: the context is made anew for the next block
    fail("a finished fiber was resumed");
}

inline void fiber_main() {
    after_switch(nullptr); // first run: no fake stack to restore
    g.run_thread(g.run_thread_arg);
    thread_exit(g.current);
}

// ---- the block-wide barrier ---------------------------------------------------------------------
inline void syncthreads(const char *file, int line) {
    fiber *self = current_fiber("__syncthreads");
    if (g.barrier_arrived == 0) {
        g.barrier_file = file;
        g.barrier_line = line;
        g.barrier_first_thread = self->linear;
    } else if (line != g.barrier_line ||
               (file != g.barrier_file && strcmp(file, g.barrier_file) != 0)) {
        fail("kernel '%s' block (%u,%u,%u): thread %u reached __syncthreads() at %s:%d while "
             "thread %u waits at __syncthreads() at %s:%d; every thread of a block must pass "
             "the same barriers",
             g.kernel_name, g.block_idx.x, g.block_idx.y, g.block_idx.z, self->linear, file, line,
             g.barrier_first_thread, g.barrier_file, g.barrier_line);
    }
    if (++g.barrier_arrived == g.threads_per_block) { // the last one: release all, go on
        g.barrier_arrived = 0;
        for (fiber &f : g.fibers)
            if (f.state == fiber_state::at_barrier) f.state = fiber_state::ready;
        return;
    }
    self->state = fiber_state::at_barrier;
    self->wait_file = file;
    self->wait_line = line;
    switch_away(self);
}

// ---- warp collectives ---------------------------------------------------------------------------
// Deposits this lane's operands and returns, once all 32 lanes of the warp have arrived at the same
// kind of collective, the rendezvous holding every lane's operands.
inline warp_rendezvous &warp_collective(collective_kind kind, const lane_operands &mine,
                                        const char *file, int line) {
    fiber *self = current_fiber(collective_name(kind));
    warp_rendezvous &r = g.warps[self->warp].buffer[self->collectives & 1];
    if (r.arrived == 0) {
        r.kind = kind;
        r.decoded = false;
        r.first_lane = self->lane;
        r.file = file;
        r.line = line;
    } else if (r.kind != kind) {
        fail("kernel '%s' block (%u,%u,%u) warp %u diverges: lane %u reached %s at %s:%d while "
             "lane %u waits at %s at %s:%d; all 32 lanes must execute the same warp collective",
             g.kernel_name, g.block_idx.x, g.block_idx.y, g.block_idx.z, self->warp, self->lane,
             collective_name(kind), file, line, r.first_lane, collective_name(r.kind), r.file,
             r.line);
    }
    r.lane[self->lane] = mine;
    self->collectives++;
    if (++r.arrived == 32) { // the last lane: release the others, go on
        r.arrived = 0;
        fiber *lanes = &g.fibers[self->warp * 32];
        for (unsigned l = 0; l < 32; l++)
            if (lanes[l].state == fiber_state::at_collective) lanes[l].state = fiber_state::ready;
        return r;
    }
    self->state = fiber_state::at_collective;
    self->wait_file = file;
    self->wait_line = line;
    self->wait_kind = kind;
    switch_away(self);
    return r;
}

template <typename T>
inline T shuffle(collective_kind kind, unsigned mask, T var, int param, int width, const char *file,
                 int line) {
    static_assert(sizeof(T) == 4 && std::is_trivially_copyable<T>::value, "32-bit shuffles only");
    if (mask != 0xFFFFFFFFu)
        fail("%s at %s:%d with mask 0x%08x: only the full mask 0xffffffff is supported (all 32 "
             "lanes take part)",
             collective_name(kind), file, line, mask);
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail("%s at %s:%d with width %d: a power of two from 1 to 32 is required",
             collective_name(kind), file, line, width);
    lane_operands mine{};
    memcpy(&mine.word[0], &var, 4);
    mine.param = param;
    const warp_rendezvous &r = warp_collective(kind, mine, file, line);
    const unsigned lane = g.current->lane;
    const unsigned segment = lane & ~(unsigned)(width - 1); // first lane of this lane's segment
    const unsigned in_segment = lane - segment;
    unsigned source = lane; // out of range: a lane gets its own value back (CUDA's definition)
    switch (kind) {
    case collective_kind::shfl_idx:
        source = segment + ((unsigned)param & (unsigned)(width - 1));
        break;
    case collective_kind::shfl_xor:
        if ((lane ^ (unsigned)param) < segment + (unsigned)width) source = lane ^ (unsigned)param;
        break;
    case collective_kind::shfl_down:
        if (in_segment + (unsigned)param < (unsigned)width) source = lane + (unsigned)param;
        break;
    case collective_kind::shfl_up:
        if (in_segment >= (unsigned)param) source = lane - (unsigned)param;
        break;
    default: fail("not a shuffle");
    }
    T out;
    memcpy(&out, &r.lane[source].word[0], 4);
    return out;
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ----------------------------
// Fragment layouts from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"),
// with groupID = lane / 4 and threadID_in_group = lane % 4, two 16-bit elements per register, the
// lower index in the low half:
//   A (16×16): a_i for i = 0..7 at row groupID (+8 for i in {2,3,6,7}),
//              column 2·threadID_in_group + (i & 1) (+8 for i >= 4); register i / 2.
//   B (16×8):  b_i for i = 0..3 at row (k) 2·threadID_in_group + (i & 1) (+8 for i >= 2),
//              column groupID; register i / 2.
//   C, D (16×8, f32): c_i at row groupID (+8 for i >= 2), column 2·threadID_in_group + (i & 1).
inline float mma_element(const warp_rendezvous &r, unsigned lane, unsigned reg, unsigned half,
                         bool bf16) {
    const uint16_t bits = (uint16_t)(r.lane[lane].word[reg] >> (16 * half));
    return bf16 ? float_from_bf16_bits(bits) : float_from_f16_bits(bits);
}
// Gathers A and B from the 32 lanes' registers (a[0..3] in word[0..3], b[0..1] in word[4..5]).
inline void mma_decode(warp_rendezvous &r, bool bf16) {
    for (unsigned row = 0; row < 16; row++)
        for (unsigned k = 0; k < 16; k++)
            r.a[row][k] =
                mma_element(r, (row % 8) * 4 + (k % 8) / 2, row / 8 + 2 * (k / 8), k % 2, bf16);
    for (unsigned k = 0; k < 16; k++)
        for (unsigned col = 0; col < 8; col++)
            r.b[k][col] = mma_element(r, col * 4 + (k % 8) / 2, 4 + k / 8, k % 2, bf16);
    r.decoded = true;
}

// D = A·B + C for this lane's four elements of D. Products of two bf16 or two f16 values are exact
// in float (8+8 and 11+11 significant bits), so only the f32 accumulation rounds; it runs in k
// order, starting from C. (The tensor cores' own order and rounding of the sum differ slightly.)
inline void mma_16816(bool bf16, float d[4], const uint32_t a[4], const uint32_t b[2],
                      const char *file, int line) {
    lane_operands mine{};
    for (int i = 0; i < 4; i++) mine.word[i] = a[i];
    mine.word[4] = b[0];
    mine.word[5] = b[1];
    warp_rendezvous &r = warp_collective(
        bf16 ? collective_kind::mma_bf16 : collective_kind::mma_f16, mine, file, line);
    if (!r.decoded) mma_decode(r, bf16);
    const unsigned lane = g.current->lane, group = lane / 4, quad = lane % 4;
    for (unsigned i = 0; i < 4; i++) {
        const unsigned row = group + (i >= 2 ? 8 : 0), col = 2 * quad + (i & 1);
        float sum = d[i];
        for (unsigned k = 0; k < 16; k++) sum += r.a[row][k] * r.b[k][col];
        d[i] = sum;
    }
}

// ---- ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16 ------------------------------------
// Matrix i is given by the row addresses of lanes 8i .. 8i+7 (16 bytes per row); lane l receives in
// register i the elements (l / 4, 2·(l % 4)) and (l / 4, 2·(l % 4) + 1) of matrix i, or with .trans
// the elements (2·(l % 4), l / 4) and (2·(l % 4) + 1, l / 4).
inline uint16_t load_b16(const void *row, unsigned column) {
    uint16_t v;
    memcpy(&v, (const unsigned char *)row + 2 * column, 2);
    return v;
}
inline void ldmatrix(unsigned count, bool trans, uint32_t *out, const void *row_address,
                     const char *file, int line) {
    static const collective_kind kinds[2][5] = {
        {collective_kind::ldmatrix_x1, collective_kind::ldmatrix_x1, collective_kind::ldmatrix_x2,
         collective_kind::ldmatrix_x4, collective_kind::ldmatrix_x4},
        {collective_kind::ldmatrix_x1_trans, collective_kind::ldmatrix_x1_trans,
         collective_kind::ldmatrix_x2_trans, collective_kind::ldmatrix_x4_trans,
         collective_kind::ldmatrix_x4_trans}};
    const collective_kind kind = kinds[trans][count == 4 ? 3 : count];
    fiber *self = current_fiber(collective_name(kind));
    if (self->lane < 8 * count && (uintptr_t)row_address % 16 != 0)
        fail("%s at %s:%d: lane %u's row address %p is not 16-byte aligned", collective_name(kind),
             file, line, self->lane, row_address);
    lane_operands mine{};
    mine.address = row_address;
    const warp_rendezvous &r = warp_collective(kind, mine, file, line);
    const unsigned lane = self->lane;
    for (unsigned i = 0; i < count; i++) {
        uint16_t lo, hi;
        if (!trans) {
            const void *row = r.lane[8 * i + lane / 4].address;
            lo = load_b16(row, 2 * (lane % 4));
            hi = load_b16(row, 2 * (lane % 4) + 1);
        } else {
            lo = load_b16(r.lane[8 * i + 2 * (lane % 4)].address, lane / 4);
            hi = load_b16(r.lane[8 * i + 2 * (lane % 4) + 1].address, lane / 4);
        }
        out[i] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
}

// ---- cp.async -----------------------------------------------------------------------------------
inline void cp_async_16(void *dst, const void *src, int src_bytes, const char *file, int line) {
    fiber *self = current_fiber("ci_cp_async_16");
    if (src_bytes < 0 || src_bytes > 16)
        fail("ci_cp_async_16 at %s:%d: src_bytes %d is not in 0..16", file, line, src_bytes);
    if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0)
        fail("ci_cp_async_16 at %s:%d: addresses must be 16-byte aligned (dst %p, src %p); "
             "declare shared arrays __align__(16)",
             file, line, dst, src);
    self->copies.push_back({dst, src, src_bytes, self->groups_committed, file, line});
}

inline void cp_async_wait(unsigned pending_allowed) {
    fiber *self = current_fiber("ci_cp_async_wait");
    if (self->groups_committed <= pending_allowed) return;
    const unsigned complete_below = self->groups_committed - pending_allowed;
    size_t kept = 0;
    for (size_t i = 0; i < self->copies.size(); i++) {
        const async_copy &c = self->copies[i];
        if (c.group < complete_below) {
            if (c.src_bytes > 0) memcpy(c.dst, c.src, (size_t)c.src_bytes);
            memset((unsigned char *)c.dst + c.src_bytes, 0, 16 - (size_t)c.src_bytes);
        } else {
            self->copies[kept++] = c;
        }
    }
    self->copies.resize(kept);
}

// ---- launches -----------------------------------------------------------------------------------
template <typename Kernel> inline const void *kernel_key(Kernel kernel) {
    return reinterpret_cast<const void *>(kernel);
}

inline void check_launch(const void *key, dim3 grid, dim3 block, size_t shared_bytes) {
    const char *name = g.kernel_name;
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
        fail("CI_LAUNCH(%s) at %s:%d: grid (%u,%u,%u) and block (%u,%u,%u) must not be empty", name,
             g.launch_file, g.launch_line, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    if (threads > max_threads_per_block || block.x > max_block_x || block.y > max_block_y ||
        block.z > max_block_z)
        fail("CI_LAUNCH(%s) at %s:%d: block (%u,%u,%u) exceeds the GPU's limits: at most %u "
             "threads, (%u,%u,%u) per dimension",
             name, g.launch_file, g.launch_line, block.x, block.y, block.z, max_threads_per_block,
             max_block_x, max_block_y, max_block_z);
    if (threads % 32 != 0)
        fail("CI_LAUNCH(%s) at %s:%d: a block of %llu threads; the emulator needs whole warps (a "
             "multiple of 32)",
             name, g.launch_file, g.launch_line, threads);
    if (grid.x > max_grid_x || grid.y > max_grid_y || grid.z > max_grid_z)
        fail("CI_LAUNCH(%s) at %s:%d: grid (%u,%u,%u) exceeds the GPU's limits (%u,%u,%u)", name,
             g.launch_file, g.launch_line, grid.x, grid.y, grid.z, max_grid_x, max_grid_y,
             max_grid_z);
    if (shared_bytes > max_dynamic_shared)
        fail("CI_LAUNCH(%s) at %s:%d: %zu bytes of dynamic shared memory; an H100/H200 block "
             "has at most %zu",
             name, g.launch_file, g.launch_line, shared_bytes, max_dynamic_shared);
    if (shared_bytes > default_dynamic_shared_limit) {
        auto allowed = g.dynamic_shared_allowed.find(key);
        const size_t limit = allowed == g.dynamic_shared_allowed.end() ? 0 : allowed->second;
        if (limit < shared_bytes)
            fail("CI_LAUNCH(%s) at %s:%d: %zu bytes of dynamic shared memory need "
                 "ci_allow_dynamic_shared(kernel, bytes) first (above 48 KiB; allowed: %zu)",
                 name, g.launch_file, g.launch_line, shared_bytes, limit);
    }
}

// Fiber stacks for one launch, each above a guard page, so that an overflow faults at once instead
// of overwriting the neighbouring fiber's stack.
struct fiber_stacks {
    unsigned char *base = nullptr;
    size_t stride = 0, bytes = 0;
    explicit fiber_stacks(size_t count) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        stride = fiber_stack_bytes + page;
        bytes = stride * count;
        void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fail("cannot map %zu bytes for fiber stacks", bytes);
        base = (unsigned char *)p;
        for (size_t i = 0; i < count; i++)
            if (mprotect(base + i * stride, page, PROT_NONE) != 0) fail("mprotect failed");
    }
    ~fiber_stacks() { munmap(base, bytes); }
    bool in_guard_page(uintptr_t address) const {
        const uintptr_t start = (uintptr_t)base;
        return address >= start && address < start + bytes &&
               (address - start) % stride < stride - fiber_stack_bytes;
    }
    fiber_stacks(const fiber_stacks &) = delete;
    fiber_stacks &operator=(const fiber_stacks &) = delete;
    unsigned char *stack(size_t i) const {
        return base + i * stride + (stride - fiber_stack_bytes);
    }
};

// A fault in a guard page is a fiber's stack overflow: say so, rather than leave a bare
// segmentation fault. The handler runs on its own stack (the fiber's is exhausted) and only during
// a launch; any other fault goes to the previous handler by faulting again. AddressSanitizer has
// its own handler and report, so under it this is left out.
struct overflow_guard {
    const fiber_stacks *stacks;
    struct sigaction previous;
    stack_t previous_stack;
    static inline const fiber_stacks *active = nullptr;
    static inline struct sigaction *restore = nullptr;
    alignas(16) static inline unsigned char signal_stack[64 * 1024];

    static void on_fault(int, siginfo_t *info, void *) {
        if (active && active->in_guard_page((uintptr_t)info->si_addr)) {
            static const char message[] =
                "cuda_emu: a CUDA thread overflowed its fiber stack (fiber_stack_bytes in "
                "tests/cuda_emu/cuda_emu.h): a kernel keeps too much in local arrays\n";
            ssize_t ignored = write(2, message, sizeof message - 1);
            (void)ignored;
            abort();
        }
        sigaction(SIGSEGV, restore, nullptr); // not ours: fault again under the previous handler
    }
    explicit overflow_guard(const fiber_stacks &s) : stacks(&s) {
#if !defined(CI_EMU_ASAN)
        stack_t alternate{};
        alternate.ss_sp = signal_stack;
        alternate.ss_size = sizeof signal_stack;
        sigaltstack(&alternate, &previous_stack);
        struct sigaction action {};
        action.sa_sigaction = on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &previous);
        active = stacks;
        restore = &previous;
#endif
    }
    ~overflow_guard() {
#if !defined(CI_EMU_ASAN)
        sigaction(SIGSEGV, &previous, nullptr);
        sigaltstack(&previous_stack, nullptr);
        active = nullptr;
        restore = nullptr;
#endif
    }
    overflow_guard(const overflow_guard &) = delete;
    overflow_guard &operator=(const overflow_guard &) = delete;
};

// Where a block stopped without all its threads finished: says what each waits for, and aborts.
[[noreturn]] inline void report_stuck_block() {
    unsigned finished = 0, at_barrier = 0, at_collective = 0;
    const fiber *first_finished = nullptr, *first_barrier = nullptr, *first_collective = nullptr;
    for (const fiber &f : g.fibers) {
        if (f.state == fiber_state::finished) {
            finished++;
            if (!first_finished) first_finished = &f;
        } else if (f.state == fiber_state::at_barrier) {
            at_barrier++;
            if (!first_barrier) first_barrier = &f;
        } else if (f.state == fiber_state::at_collective) {
            at_collective++;
            if (!first_collective) first_collective = &f;
        }
    }
    char barrier_text[512] = "", collective_text[512] = "";
    if (first_barrier)
        snprintf(barrier_text, sizeof barrier_text,
                 "; %u wait at __syncthreads() (thread %u at %s:%d)", at_barrier,
                 first_barrier->linear, first_barrier->wait_file, first_barrier->wait_line);
    if (first_collective)
        snprintf(collective_text, sizeof collective_text,
                 "; %u wait at a warp collective (thread %u at %s, %s:%d)", at_collective,
                 first_collective->linear, collective_name(first_collective->wait_kind),
                 first_collective->wait_file, first_collective->wait_line);
    fail("kernel '%s' block (%u,%u,%u) deadlocks: of %u threads, %u returned%s%s. A barrier or "
         "warp collective must be reached by every thread of the block or warp: no early return "
         "by only some threads before a __syncthreads()",
         g.kernel_name, g.block_idx.x, g.block_idx.y, g.block_idx.z, g.threads_per_block, finished,
         barrier_text, collective_text);
}

// Prepares a fiber's context to start in fiber_main on its (empty) stack.
inline void make_context(context *ctx) {
#if defined(CI_EMU_ASAN)
    // A finished fiber's last frames (thread_exit, switch_away) never return, so their redzones
    // stay poisoned; the next block's fiber on this stack must not trip over them.
    ASAN_UNPOISON_MEMORY_REGION(ctx->stack_bottom, ctx->stack_size);
#endif
#if defined(CI_EMU_STACK_SWITCH)
    // What switch_stack pops, from the lowest address: MXCSR and x87 control word, six registers,
    // the address `ret` jumps to, and a null return address for fiber_main, which leaves the stack
    // pointer 8 past a 16-byte boundary at its entry, as after a call.
    const uintptr_t top = ((uintptr_t)ctx->stack_bottom + ctx->stack_size) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;
    *--sp = (void *)&fiber_main;
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    uint32_t control[2] = {0, 0};
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
    *--sp = nullptr;
    memcpy(sp, control, 8);
    ctx->sp = sp;
#else
    if (getcontext(&ctx->uc) != 0) fail("getcontext failed");
    ctx->uc.uc_stack.ss_sp = const_cast<void *>(ctx->stack_bottom);
    ctx->uc.uc_stack.ss_size = ctx->stack_size;
    ctx->uc.uc_link = nullptr; // fibers never return: thread_exit switches away
    makecontext(&ctx->uc, fiber_main, 0);
#endif
}

inline void run_grid() {
    const unsigned n = g.threads_per_block;
    fiber_stacks stacks(n);
    overflow_guard guard(stacks);
    g.fibers.assign(n, fiber{});
    g.warps.assign(n / 32, warp_state{});
    for (unsigned i = 0; i < n; i++) {
        fiber &f = g.fibers[i];
        f.linear = i;
        f.lane = i % 32;
        f.warp = i / 32;
        f.thread_idx = {i % g.block_dim.x, (i / g.block_dim.x) % g.block_dim.y,
                        i / (g.block_dim.x * g.block_dim.y)};
        f.ctx.stack_bottom = stacks.stack(i);
        f.ctx.stack_size = fiber_stack_bytes;
    }
    for (unsigned z = 0; z < g.grid_dim.z; z++)
        for (unsigned y = 0; y < g.grid_dim.y; y++)
            for (unsigned x = 0; x < g.grid_dim.x; x++) {
                g.block_idx = {x, y, z};
                if (g.dynamic_shared_bytes) memset(g.dynamic_shared, 0xFF, g.dynamic_shared_bytes);
                g.barrier_arrived = 0;
                for (warp_state &w : g.warps) w.buffer[0].arrived = w.buffer[1].arrived = 0;
                for (fiber &f : g.fibers) {
                    f.state = fiber_state::ready;
                    f.collectives = 0;
                    f.groups_committed = 0;
                    f.copies.clear();
                    make_context(&f.ctx);
                }
                const unsigned long long linear_block =
                    x +
                    (unsigned long long)g.grid_dim.x * (y + (unsigned long long)g.grid_dim.y * z);
                g.descending = linear_block % 2 == 1;
                fiber *first = g.descending ? &g.fibers[n - 1] : &g.fibers[0];
                g.current = first;
                switch_context(&g.scheduler, &first->ctx, false);
                g.current = nullptr;
                // Back here when no fiber can run: either all finished, or the block is stuck.
                for (const fiber &f : g.fibers)
                    if (f.state != fiber_state::finished) report_stuck_block();
            }
    g.fibers.clear();
    g.warps.clear();
}

template <typename... Params> struct kernel_call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> args;
    // Each thread gets its own copies of the by-value parameters, as from CUDA's parameter space.
    static void run(void *self) {
        auto *call = static_cast<kernel_call *>(self);
        std::apply(call->kernel, call->args);
    }
};

template <typename... Params, typename... Args>
void launch(const char *name, const char *file, int line, void (*kernel)(Params...), dim3 grid,
            dim3 block, size_t shared_bytes, cudaStream_t stream, Args &&...args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "CI_LAUNCH: wrong number of arguments");
    (void)stream;
    if (g.current) fail("CI_LAUNCH(%s) at %s:%d from inside a kernel", name, file, line);
    g.kernel_name = name;
    g.launch_file = file;
    g.launch_line = line;
    check_launch(kernel_key(kernel), grid, block, shared_bytes);
    kernel_call<Params...> call{kernel,
                                std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    g.run_thread = &kernel_call<Params...>::run;
    g.run_thread_arg = &call;
    g.grid_dim = grid;
    g.block_dim = block;
    g.threads_per_block = block.x * block.y * block.z;
    // Exactly the launch's size, so that AddressSanitizer catches reads past the end.
    g.dynamic_shared_bytes = shared_bytes;
    g.dynamic_shared = static_cast<unsigned char *>(
        ::operator new(shared_bytes ? shared_bytes : 1, std::align_val_t(128)));
    run_grid();
    ::operator delete(g.dynamic_shared, std::align_val_t(128));
    g.dynamic_shared = nullptr;
    g.dynamic_shared_bytes = 0;
    g.run_thread = nullptr;
    g.run_thread_arg = nullptr;
}

inline unsigned char *dynamic_shared() {
    current_fiber("CI_DYNAMIC_SHARED");
    return g.dynamic_shared;
}

} // namespace ci_emu

// ---- the kernel vocabulary (kernels/cuda/kernel_api.cuh) ----------------------------------------
#define threadIdx (static_cast<const uint3 &>(::ci_emu::current_fiber("threadIdx")->thread_idx))
#define blockIdx (static_cast<const uint3 &>(::ci_emu::g.block_idx))
#define blockDim (static_cast<const dim3 &>(::ci_emu::g.block_dim))
#define gridDim (static_cast<const dim3 &>(::ci_emu::g.grid_dim))

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ci_emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    if (mask != 0xFFFFFFFFu) ci_emu::fail("__syncwarp at %s:%d: only the full mask", file, line);
    ci_emu::warp_collective(ci_emu::collective_kind::syncwarp, ci_emu::lane_operands{}, file, line);
}

#define CI_EMU_SHUFFLES(T)                                                                         \
    inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,                 \
                         const char *file = __builtin_FILE(), int line = __builtin_LINE()) {       \
        return ci_emu::shuffle(ci_emu::collective_kind::shfl_idx, mask, var, src_lane, width,      \
                               file, line);                                                        \
    }                                                                                              \
    inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,            \
                             const char *file = __builtin_FILE(), int line = __builtin_LINE()) {   \
        return ci_emu::shuffle(ci_emu::collective_kind::shfl_xor, mask, var, lane_mask, width,     \
                               file, line);                                                        \
    }                                                                                              \
    inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,          \
                              const char *file = __builtin_FILE(), int line = __builtin_LINE()) {  \
        return ci_emu::shuffle(ci_emu::collective_kind::shfl_down, mask, var, (int)delta, width,   \
                               file, line);                                                        \
    }                                                                                              \
    inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,            \
                            const char *file = __builtin_FILE(), int line = __builtin_LINE()) {    \
        return ci_emu::shuffle(ci_emu::collective_kind::shfl_up, mask, var, (int)delta, width,     \
                               file, line);                                                        \
    }
CI_EMU_SHUFFLES(float)
CI_EMU_SHUFFLES(int)
CI_EMU_SHUFFLES(unsigned)
#undef CI_EMU_SHUFFLES

#define CI_DYNAMIC_SHARED(type, name)                                                              \
    type *name = reinterpret_cast<type *>(::ci_emu::dynamic_shared())

// Runs the kernel over the whole grid before returning; grid and block are dim3 or integers.
#define CI_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                                  \
    ::ci_emu::launch(#kernel, __FILE__, __LINE__, (kernel), (grid), (block), (shared_bytes),       \
                     (stream), __VA_ARGS__)

// Allows the kernel launches with up to `bytes` of dynamic shared memory (CUDA's
// cudaFuncAttributeMaxDynamicSharedMemorySize; needed above 48 KiB).
template <typename Kernel> inline void ci_allow_dynamic_shared(Kernel kernel, size_t bytes) {
    if (bytes > ci_emu::max_dynamic_shared)
        ci_emu::fail("ci_allow_dynamic_shared: %zu bytes; an H100/H200 block has at most %zu",
                     bytes, ci_emu::max_dynamic_shared);
    ci_emu::g.dynamic_shared_allowed[ci_emu::kernel_key(kernel)] = bytes;
}

// ---- 16-byte loads of read-only global memory (kernel_api.cuh) ----------------------------------
// The GPU faults on a vector load from an address that is not 16-byte aligned; so does this. What
// it cannot check: that no thread writes the memory during the kernel (the loads are non-coherent),
// and the cache hints (ci_load_16_stream is an ordinary load here).
namespace ci_emu {
inline void load_16(uint32_t dst[4], const void *src, const char *what, const char *file,
                    int line) {
    current_fiber(what);
    if ((uintptr_t)src % 16 != 0)
        fail("%s at %s:%d: the address must be 16-byte aligned (%p)", what, file, line, src);
    memcpy(dst, src, 16);
}
} // namespace ci_emu
inline void ci_load_16(uint32_t dst[4], const void *src, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ci_emu::load_16(dst, src, "ci_load_16", file, line);
}
inline void ci_load_16_stream(uint32_t dst[4], const void *src, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    ci_emu::load_16(dst, src, "ci_load_16_stream", file, line);
}

// ---- tensor cores and cp.async (kernels/cuda/tensor_core.cuh declares these for nvcc) -----------
template <typename T>
inline void ci_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2],
                         const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value,
                  "ci_mma_16816 takes __nv_bfloat16 or __half");
    ci_emu::mma_16816(std::is_same<T, __nv_bfloat16>::value, d, a, b, file, line);
}
inline void ci_ldmatrix_x4(uint32_t r[4], const void *row_address,
                           const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ci_emu::ldmatrix(4, false, r, row_address, file, line);
}
inline void ci_ldmatrix_x4_trans(uint32_t r[4], const void *row_address,
                                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ci_emu::ldmatrix(4, true, r, row_address, file, line);
}
inline void ci_ldmatrix_x2(uint32_t r[2], const void *row_address,
                           const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ci_emu::ldmatrix(2, false, r, row_address, file, line);
}
inline void ci_ldmatrix_x2_trans(uint32_t r[2], const void *row_address,
                                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ci_emu::ldmatrix(2, true, r, row_address, file, line);
}
inline void ci_cp_async_16(void *shared_dst, const void *global_src, int src_bytes,
                           const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ci_emu::cp_async_16(shared_dst, global_src, src_bytes, file, line);
}
inline void ci_cp_async_commit() {
    ci_emu::current_fiber("ci_cp_async_commit")->groups_committed++;
}
template <int N> inline void ci_cp_async_wait() {
    static_assert(N >= 0, "ci_cp_async_wait<N>: N is a count of groups");
    ci_emu::cp_async_wait((unsigned)N);
}

#endif
