// The CPU emulator of the CUDA kernel vocabulary (tests/cuda_emu/cuda_emu.h): barriers, shuffles,
// mma/ldmatrix against the PTX ISA's fragment layouts (rebuilt here from the ISA's formulas, not
// from the emulator), cp.async, the dynamic shared fill, 16-bit rounding, and what it refuses.
#include "tests/cuda_emu/cuda_emu.h"
#include "kernels/cuda/tensor_core.cuh"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "tests/test_util.h"

namespace {

std::mt19937_64 make_rng() { return std::mt19937_64(cinfer_test::fresh_seed()); }

uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

// ---- launch, indices, barriers ------------------------------------------------------------------

// Every thread records its indices, then passes its value around the block through shared memory:
// after each round a thread holds what its right neighbour held, so any missing ordering between
// the write and the read of a round shows up in the result.
__global__ void neighbour_exchange(int *out, int *indices, int rounds) {
    __shared__ int slots[256];
    const unsigned block = blockIdx.x + gridDim.x * blockIdx.y;
    const unsigned t = threadIdx.x, n = blockDim.x;
    int *mine = indices + 6 * (block * n + t);
    mine[0] = (int)threadIdx.x;
    mine[1] = (int)blockIdx.x;
    mine[2] = (int)blockIdx.y;
    mine[3] = (int)blockDim.x;
    mine[4] = (int)gridDim.x;
    mine[5] = (int)gridDim.y;
    int value = (int)(block * 1000 + t);
    for (int r = 0; r < rounds; r++) {
        slots[t] = value;
        __syncthreads();
        value = slots[(t + 1) % n];
        __syncthreads();
    }
    out[block * n + t] = value;
}

TEST(Emulator, BarriersOrderNeighbourExchange) {
    const dim3 grid(3, 2);
    const int threads = 96, rounds = 7, blocks = 6;
    std::vector<int> out(blocks * threads, -1), indices(6 * blocks * threads, -1);
    CI_LAUNCH(neighbour_exchange, grid, threads, 0, nullptr, out.data(), indices.data(), rounds);
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < threads; t++) {
            const int i = b * threads + t;
            EXPECT_EQ(out[i], b * 1000 + (t + rounds) % threads)
                << "block " << b << " thread " << t;
            const int *idx = &indices[6 * i];
            EXPECT_EQ(idx[0], t);
            EXPECT_EQ(idx[1], b % 3);
            EXPECT_EQ(idx[2], b / 3);
            EXPECT_EQ(idx[3], threads);
            EXPECT_EQ(idx[4], 3);
            EXPECT_EQ(idx[5], 2);
        }
}

// ---- shuffles -----------------------------------------------------------------------------------

// out[8 per thread]: xor 1, xor 16, idx 7, idx from a per-lane source, down 3, down 2 (width 8),
// xor 4 as int, up 5 as unsigned.
__global__ void shuffles(const float *in, float *out, int *out_int, unsigned *out_unsigned) {
    const unsigned t = threadIdx.x + blockIdx.x * blockDim.x, lane = threadIdx.x % 32;
    const float v = in[t];
    float *o = out + 6 * t;
    o[0] = __shfl_xor_sync(0xffffffffu, v, 1);
    o[1] = __shfl_xor_sync(0xffffffffu, v, 16);
    o[2] = __shfl_sync(0xffffffffu, v, 7);
    o[3] = __shfl_sync(0xffffffffu, v, (int)((lane * 5 + 3) % 32));
    o[4] = __shfl_down_sync(0xffffffffu, v, 3);
    o[5] = __shfl_down_sync(0xffffffffu, v, 2, 8);
    out_int[t] = __shfl_xor_sync(0xffffffffu, (int)t * 3 - 50, 4);
    out_unsigned[t] = __shfl_up_sync(0xffffffffu, t * 7u, 5);
}

TEST(Emulator, ShufflesMatchArithmetic) {
    auto rng = make_rng();
    const int blocks = 2, threads = 64, n = blocks * threads;
    const std::vector<float> in = cinfer_test::random_floats(rng, n);
    std::vector<float> out(6 * n);
    std::vector<int> out_int(n);
    std::vector<unsigned> out_unsigned(n);
    CI_LAUNCH(shuffles, blocks, threads, 0, nullptr, in.data(), out.data(), out_int.data(),
              out_unsigned.data());
    for (int t = 0; t < n; t++) {
        const int lane = t % 32, warp_base = t - lane;
        const float *o = &out[6 * t];
        EXPECT_EQ(o[0], in[warp_base + (lane ^ 1)]);
        EXPECT_EQ(o[1], in[warp_base + (lane ^ 16)]);
        EXPECT_EQ(o[2], in[warp_base + 7]);
        EXPECT_EQ(o[3], in[warp_base + (lane * 5 + 3) % 32]);
        EXPECT_EQ(o[4], in[lane + 3 < 32 ? t + 3 : t]);    // past the warp: own value
        EXPECT_EQ(o[5], in[lane % 8 + 2 < 8 ? t + 2 : t]); // within segments of 8
        EXPECT_EQ(out_int[t], (warp_base + (lane ^ 4)) * 3 - 50);
        EXPECT_EQ(out_unsigned[t], (unsigned)(lane >= 5 ? t - 5 : t) * 7u);
    }
}

// A warp-wide sum the way kernels write it, in every lane.
__global__ void warp_sum(const float *in, float *out) {
    float v = in[threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[threadIdx.x] = v;
}

TEST(Emulator, ButterflyReduction) {
    std::vector<float> in(64), out(64);
    std::iota(in.begin(), in.end(), 1.0f);
    CI_LAUNCH(warp_sum, 1, 64, 0, nullptr, in.data(), out.data());
    for (int t = 0; t < 64; t++) EXPECT_EQ(out[t], t < 32 ? 528.0f : 1552.0f);
}

// ---- 16-bit conversions -------------------------------------------------------------------------

template <typename T> uint16_t bits16(T h) {
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
template <typename T> T from_bits16(uint16_t u) {
    T h;
    memcpy(&h, &u, 2);
    return h;
}
uint16_t to_bf16(float f) { return bits16(__float2bfloat16(f)); }
uint16_t to_f16(float f) { return bits16(__float2half(f)); }

// The value of a 16-bit pattern from its fields, in double (independent of the emulator).
double decode16(uint16_t u, int exponent_bits, int mantissa_bits) {
    const int bias = (1 << (exponent_bits - 1)) - 1;
    const unsigned exponent = (u >> mantissa_bits) & ((1u << exponent_bits) - 1);
    const unsigned mantissa = u & ((1u << mantissa_bits) - 1);
    const double sign = (u & 0x8000) ? -1.0 : 1.0;
    if (exponent == (1u << exponent_bits) - 1) return mantissa ? NAN : sign * INFINITY;
    if (exponent == 0) return sign * std::ldexp((double)mantissa, 1 - bias - mantissa_bits);
    return sign * std::ldexp((double)(mantissa | (1u << mantissa_bits)),
                             (int)exponent - bias - mantissa_bits);
}

// Round to nearest even, by searching the sorted positive values of the format.
uint16_t nearest16(float x, int exponent_bits, int mantissa_bits) {
    const uint16_t inf = (uint16_t)(((1u << exponent_bits) - 1) << mantissa_bits);
    const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
    const double a = std::fabs((double)x);
    if (std::isinf(x)) return sign | inf;
    // Positive finite patterns 0 .. inf-1 are increasing in value; inf acts as the next value up.
    uint16_t lo = 0, hi = inf;
    while (hi - lo > 1) { // invariant: value(lo) <= a < value(hi) (hi = inf: 2·max - previous)
        const uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (decode16(mid, exponent_bits, mantissa_bits) <= a)
            lo = mid;
        else
            hi = mid;
    }
    const double vlo = decode16(lo, exponent_bits, mantissa_bits);
    const double vhi = hi == inf ? 2 * decode16(inf - 1, exponent_bits, mantissa_bits) -
                                       decode16(inf - 2, exponent_bits, mantissa_bits)
                                 : decode16(hi, exponent_bits, mantissa_bits);
    if (a == vlo) return sign | lo;
    const double dlo = a - vlo, dhi = vhi - a;
    const uint16_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
    return sign | pick;
}

TEST(Conversions, TiesAndSpecials) {
    // bf16 keeps 7 fraction bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
    EXPECT_EQ(to_bf16(1.0f + 0x1p-8f), 0x3F80);
    EXPECT_EQ(to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);           // halfway to the even 1 + 2^-6
    EXPECT_EQ(to_bf16(-(1.0f + 0x1p-8f + 0x1p-20f)), 0xBF81); // just above the tie
    EXPECT_EQ(to_bf16(3.0e38f), 0x7F62);
    EXPECT_EQ(to_bf16(3.4028235e38f), 0x7F80); // max float rounds to inf
    EXPECT_EQ(to_bf16(INFINITY), 0x7F80);
    EXPECT_EQ(to_bf16(-INFINITY), 0xFF80);
    EXPECT_EQ(to_bf16(-0.0f), 0x8000);
    EXPECT_EQ(to_bf16(0x1p-133f), 0x0001); // bf16's smallest subnormal
    EXPECT_EQ(to_bf16(0x1p-134f), 0x0000); // its half: a tie, to even zero
    EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16(NAN))));
    float nan_low_payload; // payload only in the bits that bf16 drops: must not become inf
    const uint32_t nan_bits = 0x7F800001u;
    memcpy(&nan_low_payload, &nan_bits, 4);
    EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16(nan_low_payload))));
    EXPECT_EQ(__bfloat162float(from_bits16<__nv_bfloat16>(0x3FC0)), 1.5f);

    // f16 keeps 10 fraction bits.
    EXPECT_EQ(to_f16(1.0f + 0x1p-11f), 0x3C00);
    EXPECT_EQ(to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
    EXPECT_EQ(to_f16(65504.0f), 0x7BFF);
    EXPECT_EQ(to_f16(65519.0f), 0x7BFF);
    EXPECT_EQ(to_f16(65520.0f), 0x7C00); // the tie above the largest f16 goes to inf
    EXPECT_EQ(to_f16(1e9f), 0x7C00);
    EXPECT_EQ(to_f16(-INFINITY), 0xFC00);
    EXPECT_EQ(to_f16(-0.0f), 0x8000);
    EXPECT_EQ(to_f16(0x1p-24f), 0x0001);            // smallest subnormal
    EXPECT_EQ(to_f16(0x1p-25f), 0x0000);            // tie: to even zero
    EXPECT_EQ(to_f16(3 * 0x1p-25f), 0x0002);        // tie between 1 and 2 units: to even 2
    EXPECT_EQ(to_f16(0x1p-14f), 0x0400);            // smallest normal
    EXPECT_EQ(to_f16(0x1p-14f - 0x1p-25f), 0x0400); // tie between largest subnormal and it
    EXPECT_TRUE(std::isnan(__half2float(__float2half(NAN))));
    EXPECT_EQ(__half2float(from_bits16<__half>(0x0001)), 0x1p-24f);
    EXPECT_EQ(__half2float(from_bits16<__half>(0xFBFF)), -65504.0f);
}

TEST(Conversions, EveryPatternRoundTrips) {
    for (uint32_t u = 0; u < 65536; u++) {
        const uint16_t h = (uint16_t)u;
        const float fb = __bfloat162float(from_bits16<__nv_bfloat16>(h));
        const float fh = __half2float(from_bits16<__half>(h));
        const double db = decode16(h, 8, 7), dh = decode16(h, 5, 10);
        if (std::isnan(db)) {
            EXPECT_TRUE(std::isnan(fb));
            EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16(fb))));
        } else {
            ASSERT_EQ((double)fb, db) << std::hex << h;
            ASSERT_EQ(to_bf16(fb), h) << std::hex << h;
        }
        if (std::isnan(dh)) {
            EXPECT_TRUE(std::isnan(fh));
            EXPECT_TRUE(std::isnan(__half2float(__float2half(fh))));
        } else {
            ASSERT_EQ((double)fh, dh) << std::hex << h;
            ASSERT_EQ(to_f16(fh), h) << std::hex << h;
        }
    }
}

TEST(Conversions, RandomFloatsRoundToNearestEven) {
    auto rng = make_rng();
    std::uniform_int_distribution<uint32_t> any_bits;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = any_bits(rng);
        if (i % 2) { // mostly within the f16 range, with low bits near ties
            u = (u & 0x80001FFFu) | ((0x33000000u + (any_bits(rng) % 0x15000000u)) & 0x7FFFE000u);
            if (i % 4 == 1)
                u = (u & ~0x1FFFu) | 0x1000u | (any_bits(rng) % 2); // a tie, or just past
        }
        float x;
        memcpy(&x, &u, 4);
        if (std::isnan(x)) continue;
        ASSERT_EQ(to_bf16(x), nearest16(x, 8, 7)) << std::hexfloat << x;
        ASSERT_EQ(to_f16(x), nearest16(x, 5, 10)) << std::hexfloat << x;
    }
}

// ---- mma.sync m16n8k16 --------------------------------------------------------------------------

// The fragment layouts of the PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type", in its own terms: element i of a lane's fragment, with groupID = lane >> 2 and
// threadID_in_group = lane % 4; element i sits in register i / 2, half i % 2 (low first).
struct coordinate {
    int row, col;
};
coordinate ptx_a(int lane, int i) { // A, 16×16, elements a0..a7
    const int group = lane >> 2, tig = lane % 4;
    const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
    const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
    return {row, col};
}
coordinate ptx_b(int lane, int i) { // B, 16×8 (row = k), elements b0..b3
    const int group = lane >> 2, tig = lane % 4;
    return {tig * 2 + (i & 1) + (i >= 2 ? 8 : 0), group};
}
coordinate ptx_c(int lane, int i) { // C and D, 16×8, elements c0..c3
    const int group = lane >> 2, tig = lane % 4;
    return {i < 2 ? group : group + 8, tig * 2 + (i & 1)};
}

// One m16n8k16 product per warp: a (16×16 row-major) and b (16×8 row-major, K×N) as 16-bit
// patterns, c and d 16×8 f32. The fragments are gathered from memory by the layouts above.
template <typename T>
__global__ void mma_per_warp(const uint16_t *a, const uint16_t *b, const float *c, float *d) {
    const int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) / 32), lane = threadIdx.x % 32;
    const uint16_t *wa = a + warp * 256, *wb = b + warp * 128;
    uint32_t ra[4] = {0, 0, 0, 0}, rb[2] = {0, 0};
    for (int i = 0; i < 8; i++) {
        const coordinate p = ptx_a(lane, i);
        ra[i / 2] |= (uint32_t)wa[p.row * 16 + p.col] << (16 * (i % 2));
    }
    for (int i = 0; i < 4; i++) {
        const coordinate p = ptx_b(lane, i);
        rb[i / 2] |= (uint32_t)wb[p.row * 8 + p.col] << (16 * (i % 2));
    }
    float acc[4];
    for (int i = 0; i < 4; i++) {
        const coordinate p = ptx_c(lane, i);
        acc[i] = c[warp * 128 + p.row * 8 + p.col];
    }
    ci_mma_16816<T>(acc, ra, rb);
    for (int i = 0; i < 4; i++) {
        const coordinate p = ptx_c(lane, i);
        d[warp * 128 + p.row * 8 + p.col] = acc[i];
    }
}

template <typename T> void check_mma(float (*to_float)(T), T (*from_float)(float)) {
    auto rng = make_rng();
    const int warps = 6; // 3 blocks of 2 warps
    std::vector<uint16_t> a(warps * 256), b(warps * 128);
    const std::vector<float> fa = cinfer_test::random_floats(rng, a.size(), 2.0f);
    const std::vector<float> fb = cinfer_test::random_floats(rng, b.size(), 2.0f);
    const std::vector<float> c = cinfer_test::random_floats(rng, warps * 128);
    for (size_t i = 0; i < a.size(); i++) a[i] = bits16(from_float(fa[i]));
    for (size_t i = 0; i < b.size(); i++) b[i] = bits16(from_float(fb[i]));
    std::vector<float> d(warps * 128, NAN);
    CI_LAUNCH(mma_per_warp<T>, 3, 64, 0, nullptr, a.data(), b.data(), c.data(), d.data());
    for (int w = 0; w < warps; w++)
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 8; n++) {
                double ref = c[w * 128 + m * 8 + n], magnitude = std::fabs(ref);
                for (int k = 0; k < 16; k++) {
                    const double p = (double)to_float(from_bits16<T>(a[w * 256 + m * 16 + k])) *
                                     to_float(from_bits16<T>(b[w * 128 + k * 8 + n]));
                    ref += p;
                    magnitude += std::fabs(p);
                }
                // Products are exact; 16 float additions round, each by at most 2^-24 of the sum.
                EXPECT_NEAR(d[w * 128 + m * 8 + n], ref, 17 * 0x1p-24 * magnitude)
                    << "warp " << w << " D[" << m << "][" << n << "]";
            }
}

TEST(TensorCores, MmaBf16MatchesMatrixProduct) {
    check_mma<__nv_bfloat16>(__bfloat162float, __float2bfloat16);
}
TEST(TensorCores, MmaF16MatchesMatrixProduct) { check_mma<__half>(__half2float, __float2half); }

// ---- ldmatrix -----------------------------------------------------------------------------------

// A shared tile of 32 rows × 8 b16 columns, rows 48 bytes apart (so that rows are not contiguous);
// lane l passes the address of row rows[l], or null where the instruction ignores the lane.
constexpr int tile_stride = 24; // elements

template <int Count, bool Trans> __global__ void ldmatrix_kernel(const int *rows, uint32_t *out) {
    __shared__ __align__(16) uint16_t tile[32 * tile_stride];
    for (int i = threadIdx.x; i < 32 * tile_stride; i += blockDim.x) tile[i] = (uint16_t)(i + 1);
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const void *address = lane < 8 * Count ? &tile[rows[lane] * tile_stride] : nullptr;
    uint32_t r[4] = {0, 0, 0, 0};
    if (Count == 4 && !Trans) ci_ldmatrix_x4(r, address);
    if (Count == 4 && Trans) ci_ldmatrix_x4_trans(r, address);
    if (Count == 2 && !Trans) ci_ldmatrix_x2(r, address);
    if (Count == 2 && Trans) ci_ldmatrix_x2_trans(r, address);
    for (int i = 0; i < 4; i++) out[threadIdx.x * 4 + i] = r[i];
}

template <int Count, bool Trans> void check_ldmatrix() {
    auto rng = make_rng();
    std::vector<int> rows(32);
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), rng);
    std::vector<uint32_t> out(64 * 4, 0xDEADBEEF);
    CI_LAUNCH((ldmatrix_kernel<Count, Trans>), 1, 64, 0, nullptr, rows.data(), out.data());
    // Element (r, c) of matrix i is tile[rows[8i + r]][c]; the PTX ISA gives lane l the elements
    // (l / 4, 2·(l % 4)) and (l / 4, 2·(l % 4) + 1), transposed with .trans.
    auto element = [&](int i, int r, int c) {
        return (uint16_t)(rows[8 * i + r] * tile_stride + c + 1);
    };
    for (int t = 0; t < 64; t++) {
        const int lane = t % 32;
        for (int i = 0; i < 4; i++) {
            uint32_t expected = 0;
            if (i < Count) {
                const int r = lane / 4, c = 2 * (lane % 4);
                const uint16_t lo = Trans ? element(i, c, r) : element(i, r, c);
                const uint16_t hi = Trans ? element(i, c + 1, r) : element(i, r, c + 1);
                expected = lo | (uint32_t)hi << 16;
            }
            EXPECT_EQ(out[t * 4 + i], expected) << "thread " << t << " register " << i;
        }
    }
}

TEST(TensorCores, LdmatrixX4) { check_ldmatrix<4, false>(); }
TEST(TensorCores, LdmatrixX4Trans) { check_ldmatrix<4, true>(); }
TEST(TensorCores, LdmatrixX2) { check_ldmatrix<2, false>(); }
TEST(TensorCores, LdmatrixX2Trans) { check_ldmatrix<2, true>(); }

// The way a flash-attention kernel feeds the tensor cores: A (16×16, row-major) through
// ldmatrix.x4, B (16×8 stored K×N row-major, e.g. V) through ldmatrix.x2.trans, loaded into shared
// memory with cp.async.
__global__ void ldmatrix_mma(const __nv_bfloat16 *a, const __nv_bfloat16 *b, float *d) {
    CI_DYNAMIC_SHARED(__nv_bfloat16, shared);
    __nv_bfloat16 *sa = shared, *sb = shared + 256;
    const int lane = threadIdx.x;
    for (int chunk = lane; chunk < 48; chunk += 32) // 16-byte chunks: 32 of A, 16 of B
        ci_cp_async_16(chunk < 32 ? sa + chunk * 8 : sb + (chunk - 32) * 8,
                       chunk < 32 ? a + chunk * 8 : b + (chunk - 32) * 8, 16);
    ci_cp_async_commit();
    ci_cp_async_wait<0>();
    __syncthreads();
    uint32_t ra[4], rb[2];
    // matrices 0..3 of A: rows 0-7/8-15 × columns 0-7, then the same × columns 8-15
    ci_ldmatrix_x4(ra, sa + (lane % 16) * 16 + (lane / 16) * 8);
    ci_ldmatrix_x2_trans(rb, sb + (lane % 16) * 8); // lanes 0-15: rows k = 0..15 of B
    float acc[4] = {0, 0, 0, 0};
    ci_mma_16816<__nv_bfloat16>(acc, ra, rb);
    const int group = lane / 4, quad = lane % 4;
    d[group * 8 + 2 * quad] = acc[0];
    d[group * 8 + 2 * quad + 1] = acc[1];
    d[(group + 8) * 8 + 2 * quad] = acc[2];
    d[(group + 8) * 8 + 2 * quad + 1] = acc[3];
}

TEST(TensorCores, LdmatrixFeedsMma) {
    auto rng = make_rng();
    const std::vector<float> fa = cinfer_test::random_floats(rng, 256);
    const std::vector<float> fb = cinfer_test::random_floats(rng, 128);
    std::vector<__nv_bfloat16> a(256), b(128);
    for (int i = 0; i < 256; i++) a[i] = __float2bfloat16(fa[i]);
    for (int i = 0; i < 128; i++) b[i] = __float2bfloat16(fb[i]);
    std::vector<float> d(128, NAN);
    CI_LAUNCH(ldmatrix_mma, 1, 32, 384 * 2, nullptr, a.data(), b.data(), d.data());
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double ref = 0, magnitude = 0;
            for (int k = 0; k < 16; k++) {
                const double p =
                    (double)__bfloat162float(a[m * 16 + k]) * __bfloat162float(b[k * 8 + n]);
                ref += p;
                magnitude += std::fabs(p);
            }
            EXPECT_NEAR(d[m * 8 + n], ref, 17 * 0x1p-24 * magnitude) << m << "," << n;
        }
}

// ---- 16-byte loads ------------------------------------------------------------------------------

// Thread t loads the 16 bytes at src + 16·t, cached or streaming by parity, and stores them.
__global__ void load_16_copy(const unsigned char *src, uint32_t *dst) {
    const int t = threadIdx.x;
    uint32_t r[4];
    if (t % 2)
        ci_load_16_stream(r, src + 16 * t);
    else
        ci_load_16(r, src + 16 * t);
    for (int i = 0; i < 4; i++) dst[4 * t + i] = r[i];
}

TEST(Loads, SixteenBytesAsStored) {
    alignas(16) unsigned char src[64 * 16];
    auto rng = make_rng();
    for (unsigned char &b : src) b = (unsigned char)rng();
    std::vector<uint32_t> dst(64 * 4, 0);
    CI_LAUNCH(load_16_copy, 1, 64, 0, nullptr, src, dst.data());
    EXPECT_EQ(std::memcmp(src, dst.data(), sizeof src), 0);
}

// ---- cp.async and the dynamic shared fill -------------------------------------------------------

// Two groups per thread: 16 bytes, then a partial copy (8 bytes, or 0 from a null source, which
// must not be read). What the thread sees before waiting, after wait<1> and after wait<0> goes to
// `seen` (12 floats per thread); after a barrier, each thread reads its neighbour's copy.
__global__ void cp_async_groups(const float *src, float *seen, float *neighbour) {
    CI_DYNAMIC_SHARED(float, shared);
    const int t = threadIdx.x, n = blockDim.x;
    float *first = shared + 4 * t, *second = shared + 4 * (n + t);
    ci_cp_async_16(first, src + 4 * t, 16);
    ci_cp_async_commit();
    const bool partial = t % 2 == 0;
    ci_cp_async_16(second, partial ? src + 4 * (n + t) : nullptr, partial ? 8 : 0);
    ci_cp_async_commit();
    float *s = seen + 12 * t;
    s[0] = first[0];
    s[1] = second[0];
    ci_cp_async_wait<1>();
    s[2] = first[0];
    s[3] = first[3];
    s[4] = second[0];
    ci_cp_async_wait<0>();
    for (int i = 0; i < 4; i++) s[5 + i] = second[i];
    __syncthreads();
    neighbour[t] = shared[4 * ((t + 1) % n) + 1];
}

TEST(CpAsync, LazyUntilWaitAndZeroFill) {
    auto rng = make_rng();
    const int n = 64;
    const std::vector<float> src = cinfer_test::random_floats(rng, 8 * n);
    std::vector<float> seen(12 * n, 0.0f), neighbour(n);
    CI_LAUNCH(cp_async_groups, 1, n, 8 * n * sizeof(float), nullptr, src.data(), seen.data(),
              neighbour.data());
    for (int t = 0; t < n; t++) {
        const float *s = &seen[12 * t];
        EXPECT_EQ(bits_of(s[0]), 0xFFFFFFFFu) << "read before the wait sees the 0xFF fill";
        EXPECT_EQ(bits_of(s[1]), 0xFFFFFFFFu);
        EXPECT_EQ(s[2], src[4 * t]);
        EXPECT_EQ(s[3], src[4 * t + 3]);
        EXPECT_EQ(bits_of(s[4]), 0xFFFFFFFFu) << "wait<1> leaves the newest group pending";
        if (t % 2 == 0) {
            EXPECT_EQ(s[5], src[4 * (n + t)]);
            EXPECT_EQ(s[6], src[4 * (n + t) + 1]);
        } else {
            EXPECT_EQ(bits_of(s[5]), 0u);
            EXPECT_EQ(bits_of(s[6]), 0u);
        }
        EXPECT_EQ(bits_of(s[7]), 0u) << "zero fill past src_bytes";
        EXPECT_EQ(bits_of(s[8]), 0u);
        EXPECT_EQ(neighbour[t], src[4 * ((t + 1) % n) + 1]);
    }
}

// Each block reads its dynamic shared memory before writing it, then scribbles over it: every block
// must see the fill, not the previous block's values.
__global__ void read_before_write(uint32_t *seen, int words) {
    CI_DYNAMIC_SHARED(uint32_t, shared);
    for (int i = threadIdx.x; i < words; i += blockDim.x) {
        seen[blockIdx.x * words + i] = shared[i];
        shared[i] = 12345u;
    }
}

TEST(SharedMemory, DynamicSharedIsNaNFilledForEveryBlock) {
    const int words = 300, blocks = 3;
    std::vector<uint32_t> seen(blocks * words, 0);
    CI_LAUNCH(read_before_write, blocks, 128, words * 4, nullptr, seen.data(), words);
    for (uint32_t v : seen) ASSERT_EQ(v, 0xFFFFFFFFu);
    float f;
    memcpy(&f, &seen[0], 4);
    EXPECT_TRUE(std::isnan(f));
    EXPECT_TRUE(std::isnan(__bfloat162float(from_bits16<__nv_bfloat16>(0xFFFF))));
    EXPECT_TRUE(std::isnan(__half2float(from_bits16<__half>(0xFFFF))));
}

__global__ void large_shared(uint32_t *out) {
    CI_DYNAMIC_SHARED(uint32_t, shared);
    shared[threadIdx.x + 16000] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = shared[16000 + (threadIdx.x + 1) % 32];
}

TEST(Launch, DynamicSharedAbove48KiBWithOptIn) {
    std::vector<uint32_t> out(32);
    ci_allow_dynamic_shared(large_shared, 100 * 1024);
    CI_LAUNCH(large_shared, 1, 32, 100 * 1024, nullptr, out.data());
    for (int t = 0; t < 32; t++) EXPECT_EQ(out[t], (uint32_t)(t + 1) % 32);
}

// ---- what the emulator refuses ------------------------------------------------------------------

__global__ void does_nothing(int *) {}

TEST(LaunchDeathTest, LimitsOfTheGpu) {
    int x = 0;
    EXPECT_DEATH(CI_LAUNCH(does_nothing, 1, 1056, 0, nullptr, &x), "block \\(1056,1,1\\) exceeds");
    EXPECT_DEATH(CI_LAUNCH(does_nothing, 1, 48, 0, nullptr, &x), "multiple of 32");
    EXPECT_DEATH(CI_LAUNCH(does_nothing, dim3(1, 65536), 32, 0, nullptr, &x), "grid");
    EXPECT_DEATH(CI_LAUNCH(does_nothing, dim3(1, 1, 70000), 32, 0, nullptr, &x), "grid");
    EXPECT_DEATH(CI_LAUNCH(does_nothing, 0, 32, 0, nullptr, &x), "must not be empty");
    EXPECT_DEATH(CI_LAUNCH(does_nothing, 1, 32, 232449, nullptr, &x), "at most 232448");
    EXPECT_DEATH(CI_LAUNCH(does_nothing, 1, 32, 48 * 1024 + 16, nullptr, &x),
                 "ci_allow_dynamic_shared");
    EXPECT_DEATH(
        {
            ci_allow_dynamic_shared(does_nothing, 64 * 1024);
            CI_LAUNCH(does_nothing, 1, 32, 64 * 1024 + 16, nullptr, &x);
        },
        "allowed: 65536");
    EXPECT_DEATH(ci_allow_dynamic_shared(does_nothing, 232449), "at most 232448");
    EXPECT_DEATH((void)threadIdx.x, "outside a kernel");
}

// Block 1's second and third warps return before the barrier that the first warp waits at.
__global__ void early_return(int *out) {
    if (blockIdx.x == 1 && threadIdx.x >= 32) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
__global__ void different_barriers(int *out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}
__global__ void divergent_shuffles(int *out) {
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16)
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    else
        v = __shfl_down_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
__global__ void half_warp_shuffle(int *out) {
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
__global__ void partial_mask(int *out) {
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (int)threadIdx.x, 1);
}
__global__ void forgotten_cp_async(int *out) {
    __shared__ __align__(16) int buffer[128];
    ci_cp_async_16(buffer + 4 * (threadIdx.x % 32), out, 16);
    ci_cp_async_commit();
}
__global__ void misaligned_cp_async(int *out) {
    __shared__ __align__(16) int buffer[256];
    ci_cp_async_16(buffer + 1 + 4 * threadIdx.x, out, 16);
    ci_cp_async_commit();
    ci_cp_async_wait<0>();
}
__global__ void misaligned_load_16(int *out) {
    uint32_t r[4];
    ci_load_16_stream(r, out + (threadIdx.x == 5 ? 2 : 0));
}
__global__ void misaligned_ldmatrix(int *) {
    __shared__ __align__(16) uint16_t tile[8 * 16];
    uint32_t r[2];
    ci_ldmatrix_x2(r, tile + (threadIdx.x % 8) * 8 + (threadIdx.x == 3 ? 1 : 0));
}

TEST(LaunchDeathTest, BlocksThatCannotFinish) {
    std::vector<int> out(1024, 0);
    int *aligned = out.data() + (16 - (uintptr_t)out.data() % 16) % 16 / sizeof(int);
    EXPECT_DEATH(CI_LAUNCH(early_return, 2, 96, 0, nullptr, out.data()),
                 "block \\(1,0,0\\) deadlocks: of 96 threads, 64 returned; 32 wait at "
                 "__syncthreads\\(\\)");
    EXPECT_DEATH(CI_LAUNCH(different_barriers, 1, 64, 0, nullptr, out.data()), "the same barriers");
    EXPECT_DEATH(CI_LAUNCH(divergent_shuffles, 1, 32, 0, nullptr, out.data()), "warp 0 diverges");
    EXPECT_DEATH(CI_LAUNCH(half_warp_shuffle, 1, 64, 0, nullptr, out.data()),
                 "wait at a warp collective");
    EXPECT_DEATH(CI_LAUNCH(partial_mask, 1, 32, 0, nullptr, out.data()), "only the full mask");
    EXPECT_DEATH(CI_LAUNCH(forgotten_cp_async, 1, 32, 0, nullptr, out.data()), "never waited for");
    EXPECT_DEATH(CI_LAUNCH(misaligned_cp_async, 1, 32, 0, nullptr, out.data()), "16-byte aligned");
    EXPECT_DEATH(CI_LAUNCH(misaligned_load_16, 1, 32, 0, nullptr, aligned),
                 "ci_load_16_stream at .* must be 16-byte aligned");
    EXPECT_DEATH(CI_LAUNCH(misaligned_ldmatrix, 1, 32, 0, nullptr, out.data()),
                 "lane 3's row address .* is not 16-byte aligned");
}

// The compiler must not carry a shared value it loaded before a barrier past it: the fiber switch
// inside __syncthreads is where other threads write. (An early version let GCC's interprocedural
// analysis see through the stack switch, and it reused the stale load.)
__global__ void reload_after_barrier(int *out, int *early) {
    __shared__ int slots[64];
    const unsigned t = threadIdx.x, next = (t + 1) % 64;
    slots[t] = -1;
    __syncthreads();
    early[t] = slots[next]; // -1, or the neighbour's value if it already ran
    slots[t] = (int)t + 100;
    __syncthreads();
    out[t] = slots[next];
}

TEST(Emulator, SharedValuesAreReloadedAfterBarriers) {
    std::vector<int> out(64), early(64);
    for (int blocks : {1, 2}) {
        CI_LAUNCH(reload_after_barrier, blocks, 64, 0, nullptr, out.data(), early.data());
        for (int t = 0; t < 64; t++) EXPECT_EQ(out[t], (t + 1) % 64 + 100) << "thread " << t;
    }
}

// A kernel that forgets the barrier between writing its slot and reading a neighbour's: fibers run
// in ascending order in even blocks and descending in odd ones, so whichever neighbour is read,
// some thread reads it before it was written and sees the fill.
__global__ void missing_barrier(uint32_t *seen, int step) {
    CI_DYNAMIC_SHARED(uint32_t, slots);
    const unsigned n = blockDim.x, t = threadIdx.x;
    slots[t] = t;
    seen[blockIdx.x * n + t] = slots[(t + n + step) % n]; // a __syncthreads() belongs before this
}

TEST(Emulator, MissingBarrierShowsInEitherDirection) {
    for (int step : {1, -1}) {
        std::vector<uint32_t> seen(2 * 64, 0);
        CI_LAUNCH(missing_barrier, 2, 64, 64 * 4, nullptr, seen.data(), step);
        EXPECT_NE(std::count(seen.begin(), seen.end(), 0xFFFFFFFFu), 0) << "step " << step;
    }
}

// Deep recursion stands in for a kernel with too much in local arrays.
__device__ int deep(int depth, volatile char *previous) {
    volatile char frame[1024];
    frame[0] = previous ? previous[0] + 1 : 0;
    return depth == 0 ? frame[0] : deep(depth - 1, frame) + frame[1023 * (depth % 2)];
}
__global__ void overflows_its_stack(int *out) { out[threadIdx.x] = deep(100000, nullptr); }

TEST(LaunchDeathTest, StackOverflowIsNamed) {
    std::vector<int> out(32);
#if defined(CI_EMU_ASAN)
    EXPECT_DEATH(CI_LAUNCH(overflows_its_stack, 1, 32, 0, nullptr, out.data()), "stack-overflow");
#else
    EXPECT_DEATH(CI_LAUNCH(overflows_its_stack, 1, 32, 0, nullptr, out.data()),
                 "overflowed its fiber stack");
#endif
}

// ---- speed --------------------------------------------------------------------------------------

__global__ void barrier_rounds(float *out, int rounds) {
    __shared__ float slots[128];
    float v = (float)threadIdx.x;
    for (int r = 0; r < rounds; r++) {
        slots[threadIdx.x] = v;
        __syncthreads();
        v += slots[(threadIdx.x + 1) % 128] * 0.5f;
    }
    out[blockIdx.x * 128 + threadIdx.x] = v;
}

// Not a pass/fail bound (the machine may be shared): prints what a launch of 64 blocks × 128
// threads with 50 barriers each costs, i.e. 64·128·50 fiber switches.
TEST(Speed, SixtyFourBlocksOfFiftyBarriers) {
    std::vector<float> out(64 * 128);
    const auto start = std::chrono::steady_clock::now();
    CI_LAUNCH(barrier_rounds, 64, 128, 0, nullptr, out.data(), 50);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("[cuda_emu] 64 blocks x 128 threads x 50 barriers: %.1f ms (%.0f ns per switch)\n",
                ms, ms * 1e6 / (64.0 * 128 * 50));
    EXPECT_TRUE(std::isfinite(out[0]));
}

} // namespace
