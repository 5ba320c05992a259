// x [..., N, H, W, C] -> y [..., C, H, W, N] (float32) as an XLA FFI handler for the CPU.
//
// XLA:CPU's weight-gradient convolution reads its input as [C, H, W, N]; XLA's own permutation walks the
// NHWC input at a stride of H*W*C floats (a power of two: every row lands in the same cache set) and runs
// at ~1-3 GB/s. Here each (n, pixel block) row of the input is copied once into a contiguous scratch
// block, which is then transposed 8x8 in registers (AVX2 where the CPU has it, plain loops otherwise).
// Work is split over XLA's intra-op thread pool; the handler is asynchronous (returns a Future).
// Built by jaxrepro/models/cpu_kernels.py against jaxlib's FFI headers.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "xla/ffi/api/ffi.h"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(JAXREPRO_NO_AVX2)
#include <immintrin.h>
#define JAXREPRO_X86 1
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPixelBlock = 16;    // pixels per scratch block (N * 16 * C floats)

// 8x8 block: d[r * ds + k] = s[k * ss + r].
void Transpose8Scalar(const float* s, int64_t ss, float* d, int64_t ds) {
  for (int r = 0; r < 8; ++r)
    for (int k = 0; k < 8; ++k) d[r * ds + k] = s[k * ss + r];
}

#ifdef JAXREPRO_X86
__attribute__((target("avx2"))) void Transpose8Avx2(const float* s, int64_t ss, float* d, int64_t ds) {
  __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss);
  __m256 r2 = _mm256_loadu_ps(s + 2 * ss), r3 = _mm256_loadu_ps(s + 3 * ss);
  __m256 r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss);
  __m256 r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}
const bool kHasAvx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));
#endif

void Transpose8(const float* s, int64_t ss, float* d, int64_t ds) {
#ifdef JAXREPRO_X86
  if (kHasAvx2) return Transpose8Avx2(s, ss, d, ds);
#endif
  Transpose8Scalar(s, ss, d, ds);
}

struct Shape {
  int64_t batch, n, m, c;    // m = H * W; leading dims folded into batch
  int64_t blocks_per_item() const { return (m + kPixelBlock - 1) / kPixelBlock; }
};

// Units [begin, end) of (batch item, pixel block); buf holds n * kPixelBlock * c floats.
void Run(const float* x, float* y, const Shape& s, int64_t begin, int64_t end, float* buf) {
  const int64_t n = s.n, m = s.m, c = s.c, per = s.blocks_per_item();
  for (int64_t u = begin; u < end; ++u) {
    const int64_t b = u / per, j0 = (u % per) * kPixelBlock, jn = std::min(kPixelBlock, m - j0);
    const float* xb = x + b * n * m * c;
    float* yb = y + b * n * m * c;
    for (int64_t i = 0; i < n; ++i)                                       // buf [n][jn][c]
      std::memcpy(buf + i * jn * c, xb + (i * m + j0) * c, sizeof(float) * jn * c);
    const int64_t n8 = n - n % 8, c8 = c - c % 8;
    for (int64_t k0 = 0; k0 < c8; k0 += 8)
      for (int64_t jj = 0; jj < jn; ++jj) {
        float* yrow = yb + (k0 * m + j0 + jj) * n;                         // y[k0][j0 + jj][:]
        for (int64_t i0 = 0; i0 < n8; i0 += 8)
          Transpose8(buf + (i0 * jn + jj) * c + k0, jn * c, yrow + i0, m * n);
      }
    for (int64_t k = 0; k < c; ++k)                                       // the edges: n % 8, c % 8
      for (int64_t jj = 0; jj < jn; ++jj)
        for (int64_t i = (k < c8 ? n8 : 0); i < n; ++i)
          yb[(k * m + j0 + jj) * n + i] = buf[(i * jn + jj) * c + k];
  }
}

ffi::Future NhwcToChwnImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  auto dims = x.dimensions();
  const int64_t rank = static_cast<int64_t>(dims.size());
  ffi::Promise promise;
  ffi::Future future(promise);
  if (rank < 4) {
    promise.SetError(ffi::Error::InvalidArgument("nhwc_to_chwn: operand rank must be >= 4"));
    return future;
  }
  Shape s{1, dims[rank - 4], dims[rank - 3] * dims[rank - 2], dims[rank - 1]};
  for (int64_t d = 0; d < rank - 4; ++d) s.batch *= dims[d];
  if (s.batch * s.n * s.m * s.c == 0) {
    promise.SetAvailable();
    return future;
  }
  const int64_t units = s.batch * s.blocks_per_item();
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), units));
  const int64_t scratch = s.n * kPixelBlock * s.c;
  // One task's share; an allocation failure is reported as an error, never thrown across the FFI boundary.
  auto run = [=](int64_t t, int64_t of) -> ffi::Error {
    std::unique_ptr<float[]> buf(new (std::nothrow) float[scratch]);
    if (!buf) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "nhwc_to_chwn: out of memory for scratch");
    Run(xp, yp, s, units * t / of, units * (t + 1) / of, buf.get());
    return ffi::Error::Success();
  };
  if (tasks == 1) {
    ffi::Error e = run(0, 1);
    if (e.success()) promise.SetAvailable(); else promise.SetError(e);
    return future;
  }
  ffi::CountDownPromise done(std::move(promise), tasks);
  for (int64_t t = 1; t < tasks; ++t)
    pool.Schedule([run, done, t, tasks]() mutable { done.CountDown(1, run(t, tasks)); });
  done.CountDown(1, run(0, tasks));
  return future;
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxreproNhwcToChwn, NhwcToChwnImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
