// dw [KH, KW, Ci, Co] = sum over n, ho, wo of x[n, ho+i-ph, wo+j-pw, ci] * dy[n, ho, wo, co] (float32, zero
// outside x): the weight gradient of a stride-1 NHWC/HWIO convolution, as an XLA FFI handler for the CPU.
//
// XLA:CPU runs this as a convolution over x permuted to [Ci, H, W, N] at about half the FMA rate of its
// forward convolution. Here dw is accumulated directly from the NHWC operands: for each tap and each block of
// R input channels x NV vectors of output channels, R x NV accumulators stay in registers while one row of
// pixels streams past (per pixel: NV loads of dy, R broadcasts of x, R * NV FMAs). Images are split over
// XLA's intra-op thread pool, each task summing into its own copy of dw; the last task to finish adds them.
// AVX-512 and AVX2+FMA variants are chosen at run time (plain vectors otherwise, or with JAXREPRO_NO_AVX2).
// Built by jaxrepro/models/cpu_kernels.py with nhwc_to_chwn.cc into one library.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>

#include "xla/ffi/api/ffi.h"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(JAXREPRO_NO_AVX2)
#define JAXREPRO_DW_X86 1
#endif

namespace ffi = xla::ffi;

namespace {

struct Dims {
  int64_t n, h, w, ci, ho, wo, co, kh, kw, ph, pw;
};

template <int VL>
struct Vec {
  typedef float type __attribute__((vector_size(VL * 4), aligned(4), may_alias));
};

// acc[r][j] (r < R, j < NV vectors of VL) += sum_p a[p*lda + r] * b[p*ldb + j*VL]; acc kept in d (rows ldd apart).
template <int VL, int R, int NV>
__attribute__((always_inline)) inline void Tile(const float* a, const float* b, int64_t len, int64_t lda,
                                                int64_t ldb, float* d, int64_t ldd) {
  typedef typename Vec<VL>::type V;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = *reinterpret_cast<const V*>(d + r * ldd + j * VL);
  for (int64_t p = 0; p < len; ++p, a += lda, b += ldb) {
    V bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = *reinterpret_cast<const V*>(b + j * VL);
    for (int r = 0; r < R; ++r) {
      const V s = V{} + a[r];
      for (int j = 0; j < NV; ++j) acc[r][j] += s * bv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) *reinterpret_cast<V*>(d + r * ldd + j * VL) = acc[r][j];
}

// The same for the last Co % VL output channels, one scalar at a time.
__attribute__((always_inline)) inline void TileTail(const float* a, const float* b, int64_t len, int64_t lda,
                                                    int64_t ldb, float* d, int64_t ldd, int rows, int cols) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      float s = d[r * ldd + c];
      for (int64_t p = 0; p < len; ++p) s += a[p * lda + r] * b[p * ldb + c];
      d[r * ldd + c] = s;
    }
}

template <int VL, int R, int NV>
__attribute__((always_inline)) inline void TileRows(int rows, const float* a, const float* b, int64_t len,
                                                    int64_t lda, int64_t ldb, float* d, int64_t ldd) {
  if constexpr (R > 1) {
    if (rows < R) return TileRows<VL, R - 1, NV>(rows, a, b, len, lda, ldb, d, ldd);
  }
  Tile<VL, R, NV>(a, b, len, lda, ldb, d, ldd);
}

template <int VL, int R, int NV>
__attribute__((always_inline)) inline void TileAny(int rows, int nv, const float* a, const float* b, int64_t len,
                                                   int64_t lda, int64_t ldb, float* d, int64_t ldd) {
  if constexpr (NV > 1) {
    if (nv < NV) return TileAny<VL, R, NV - 1>(rows, nv, a, b, len, lda, ldb, d, ldd);
  }
  TileRows<VL, R, NV>(rows, a, b, len, lda, ldb, d, ldd);
}

// d (zeroed or partial) += the contributions of images n0 <= n < n1.
template <int VL, int R, int NV>
__attribute__((always_inline)) inline void Images(const Dims& s, const float* x, const float* dy, float* d,
                                                  int64_t n0, int64_t n1) {
  constexpr int64_t kRows = 4;                             // output rows per block: dy's block stays in cache
  const int64_t co_vec = s.co / VL * VL;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t hb = 0; hb < s.ho; hb += kRows)
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j) {
          const int64_t w0 = std::max<int64_t>(0, s.pw - j), w1 = std::min<int64_t>(s.wo, s.w + s.pw - j);
          if (w1 <= w0) continue;
          float* dt = d + (i * s.kw + j) * s.ci * s.co;
          for (int64_t ho = hb; ho < std::min(hb + kRows, s.ho); ++ho) {
            const int64_t hi = ho + i - s.ph;
            if (hi < 0 || hi >= s.h) continue;
            const float* xa = x + ((n * s.h + hi) * s.w + (w0 + j - s.pw)) * s.ci;
            const float* yb = dy + ((n * s.ho + ho) * s.wo + w0) * s.co;
            for (int64_t c0 = 0; c0 < s.co; c0 += NV * VL) {
              const int nv = static_cast<int>(std::min<int64_t>(NV * VL, co_vec - c0) / VL);
              for (int64_t r0 = 0; r0 < s.ci; r0 += R) {
                const int rows = static_cast<int>(std::min<int64_t>(R, s.ci - r0));
                float* dd = dt + r0 * s.co + c0;
                if (nv > 0) TileAny<VL, R, NV>(rows, nv, xa + r0, yb + c0, w1 - w0, s.ci, s.co, dd, s.co);
                if (c0 + NV * VL > co_vec && co_vec < s.co)       // the scalar tail, once, in the last block
                  TileTail(xa + r0, yb + co_vec, w1 - w0, s.ci, s.co, dt + r0 * s.co + co_vec, s.co, rows,
                           static_cast<int>(s.co - co_vec));
              }
            }
          }
        }
}

#ifdef JAXREPRO_DW_X86
__attribute__((target("avx512f"))) void ImagesAvx512(const Dims& s, const float* x, const float* dy, float* d,
                                                     int64_t n0, int64_t n1) {
  Images<16, 6, 4>(s, x, dy, d, n0, n1);                  // 24 accumulators + 4 dy vectors of 32 registers
}
__attribute__((target("avx2,fma"))) void ImagesAvx2(const Dims& s, const float* x, const float* dy, float* d,
                                                    int64_t n0, int64_t n1) {
  Images<8, 6, 2>(s, x, dy, d, n0, n1);                   // 12 accumulators + 2 dy vectors of 16 registers
}
#endif
void ImagesPlain(const Dims& s, const float* x, const float* dy, float* d, int64_t n0, int64_t n1) {
  Images<4, 4, 2>(s, x, dy, d, n0, n1);
}

using ImagesFn = void (*)(const Dims&, const float*, const float*, float*, int64_t, int64_t);

ImagesFn PickOnce() {
#ifdef JAXREPRO_DW_X86
  __builtin_cpu_init();
#ifndef JAXREPRO_NO_AVX512                                 // (tests build without it to check the AVX2 path)
  if (__builtin_cpu_supports("avx512f")) return ImagesAvx512;
#endif
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ImagesAvx2;
#endif
  return ImagesPlain;
}

ImagesFn Pick() {                                          // the CPU does not change: decided on the first call
  static const ImagesFn fn = PickOnce();
  return fn;
}

// Shared by the tasks of one call: per-task partial sums and the count of tasks still running.
struct Call {
  Dims s;
  const float* x;
  const float* dy;
  float* out;
  int64_t tasks, size;
  std::unique_ptr<float[]> partial;                        // tasks - 1 copies of dw (task 0 sums into out)
  std::atomic<int64_t> running;
  ffi::CountDownPromise done;
  ImagesFn fn;
};

void RunTask(const std::shared_ptr<Call>& c, int64_t t) {
  float* d = t == 0 ? c->out : c->partial.get() + (t - 1) * c->size;
  c->fn(c->s, c->x, c->dy, d, c->s.n * t / c->tasks, c->s.n * (t + 1) / c->tasks);
  if (c->running.fetch_sub(1, std::memory_order_acq_rel) == 1) {      // the last task: add the partial sums
    for (int64_t k = 1; k < c->tasks; ++k) {
      const float* p = c->partial.get() + (k - 1) * c->size;
      for (int64_t e = 0; e < c->size; ++e) c->out[e] += p[e];
    }
    c->done.CountDown();
  }
}

ffi::Future ConvWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t ph, int64_t pw) {
  ffi::Promise promise;
  ffi::Future future(promise);
  auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4) {
    promise.SetError(ffi::Error::InvalidArgument("conv_weight_grad: x, dy and dw must have rank 4"));
    return future;
  }
  Dims s{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], ph, pw};
  if (yd[0] != s.n || wd[2] != s.ci || wd[3] != s.co || ph < 0 || pw < 0 || s.ho != s.h + 2 * ph - s.kh + 1 ||
      s.wo != s.w + 2 * pw - s.kw + 1) {
    promise.SetError(ffi::Error::InvalidArgument(
        "conv_weight_grad: shapes do not match a stride-1 convolution x[N,H,W,Ci] * dw[KH,KW,Ci,Co] -> "
        "dy[N,H+2ph-KH+1,W+2pw-KW+1,Co]"));
    return future;
  }
  float* out = dw->typed_data();
  const int64_t size = s.kh * s.kw * s.ci * s.co;
  std::fill(out, out + size, 0.0f);
  if (size == 0 || s.n == 0 || s.ho <= 0 || s.wo <= 0) {
    promise.SetAvailable();
    return future;
  }
  std::shared_ptr<Call> c(new (std::nothrow) Call);
  if (!c) {
    promise.SetError(ffi::Error(ffi::ErrorCode::kResourceExhausted, "conv_weight_grad: out of memory"));
    return future;
  }
  c->s = s, c->x = x.typed_data(), c->dy = dy.typed_data(), c->out = out, c->size = size, c->fn = Pick();
  // one task per thread, at most one per image, and partial sums of at most 64 MiB in all
  const int64_t by_memory = 1 + (int64_t{64} << 20) / (size * int64_t{sizeof(float)});
  c->tasks = std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(pool.num_threads()), s.n, by_memory}));
  if (c->tasks > 1) {
    c->partial.reset(new (std::nothrow) float[(c->tasks - 1) * size]());
    if (!c->partial) c->tasks = 1;                         // no room for partial sums: one task
  }
  c->running.store(c->tasks);
  c->done = ffi::CountDownPromise(std::move(promise), 1);
  int64_t t = 1;
  try {                                                    // nothing may throw across the FFI boundary
    for (; t < c->tasks; ++t) pool.Schedule([c, t]() { RunTask(c, t); });
  } catch (...) {                                          // tasks t.. not scheduled: run them here
    for (; t < c->tasks; ++t) RunTask(c, t);
  }
  RunTask(c, 0);
  return future;
}

}  // namespace

// Which variant runs on this CPU: 512 (AVX-512), 256 (AVX2+FMA) or 0 (plain vectors); for tests and logs.
extern "C" int JaxreproConvWeightGradIsa() {
  const ImagesFn fn = Pick();
#ifdef JAXREPRO_DW_X86
  if (fn == ImagesAvx512) return 512;
  if (fn == ImagesAvx2) return 256;
#endif
  return fn == ImagesPlain ? 0 : -1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxreproConvWeightGrad, ConvWeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw"));
