// The fused preprocessing kernel for one block of rows, written once with GCC vector extensions and
// compiled per instruction set: each cpu_isa_*.cpp includes this file inside its own namespace after its
// `#pragma GCC target`, so no function here is shared between the variants. No #include here: the
// including file has already included <cstdint>, <cstring> and cpu_params.h before the pragma.
//
// Layout: the block's rows are transposed into scratch `buf[t][R]` (R rows = lanes; V vectors of W
// lanes), so the recursions run across rows in SIMD while each lane walks its own row in time.
// Per block: convert + repair (per row) -> odd extension -> forward cascade -> backward cascade
// -> polyphase resampling -> z-score -> one write of the output rows.

template <typename T, int W>
struct VecOf {
  typedef T type __attribute__((vector_size(W * sizeof(T))));
};

static inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    const float sub = float(mant) * 5.9604644775390625e-8f;  // mant * 2^-24
    return sign ? -sub : sub;
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct RowInfo {
  int64_t n_bad = 0;
  double lo = 1e300, hi = -1e300;  // range of the valid samples
};

constexpr int64_t kTile = 64;  // the longest span convert_span handles (the tail after the W x W tiles)

// Converts samples [t0, t0 + count) (count <= kTile) of one row to mV and writes them to column `col`
// (stride R) of the transposed buffer. Invalid samples are written as NaN (for repair_row) and counted;
// NaN also drops them from the min/max, which is done in SIMD.
template <typename T, int IT, int W>
static void convert_span(const void* xrow, int64_t t0, int64_t count, T inv_gain, T base, T* col, int64_t R,
                         RowInfo& info) {
  typedef typename VecOf<T, W>::type vec;
  const T nan = T(__builtin_nan(""));
  alignas(64) T v[kTile];
  for (int64_t i = 0; i < count; ++i) {
    const int64_t t = t0 + i;
    if constexpr (IT == kInt16) {
      const int16_t raw = static_cast<const int16_t*>(xrow)[t];
      const T val = (T(raw) - base) * inv_gain;
      v[i] = raw == spec::kInvalidInt16 ? nan : val;
    } else {
      T raw;
      if constexpr (IT == kHalf) raw = T(half_to_float(static_cast<const uint16_t*>(xrow)[t]));
      else if constexpr (IT == kBFloat16) raw = T(bf16_to_float(static_cast<const uint16_t*>(xrow)[t]));
      else if constexpr (IT == kFloat) raw = T(static_cast<const float*>(xrow)[t]);
      else raw = T(static_cast<const double*>(xrow)[t]);
      const T val = (raw - base) * inv_gain;
      v[i] = (val - val == T(0)) ? val : nan;  // inf and NaN are invalid
    }
  }
  for (int64_t i = count; i < kTile; ++i) v[i] = nan;
  vec lo = vec{} + T(sizeof(T) == 4 ? 3.0e38 : 1.0e300), hi = -lo;
  vec x0 = *reinterpret_cast<const vec*>(v);
  decltype(x0 != x0) n_nan = x0 != x0;
  n_nan = n_nan - n_nan;
  for (int64_t i = 0; i < kTile; i += W) {
    const vec x = *reinterpret_cast<const vec*>(v + i);
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
    n_nan -= (x != x);
  }
  double l = info.lo, h = info.hi;
  int64_t bad = -(kTile - count);
  for (int w = 0; w < W; ++w) {
    l = double(lo[w]) < l ? double(lo[w]) : l;
    h = double(hi[w]) > h ? double(hi[w]) : h;
    bad += int64_t(n_nan[w]);
  }
  for (int64_t i = 0; i < count; ++i) col[(t0 + i) * R] = v[i];
  info.n_bad += bad;
  info.lo = l;
  info.hi = h;
}

// In-register transpose of a W x W tile held as W vectors: stage H swaps the off-diagonal H x H blocks
// of every 2H x 2H block (log2(W) stages of W two-source shuffles).
template <typename T, int W, int H>
static inline void transpose_stages(typename VecOf<T, W>::type* r) {
  if constexpr (H >= 1) {
    typedef typename VecOf<T, W>::type vec;
    typedef decltype(r[0] != r[0]) ivec;
    ivec lo, hi;
    for (int k = 0; k < W; ++k) {
      lo[k] = (k & H) ? W + k - H : k;
      hi[k] = (k & H) ? W + k : k + H;
    }
    for (int i = 0; i < W; ++i) {
      if (i & H) continue;
      const vec a = r[i], b = r[i + H];
      r[i] = __builtin_shuffle(a, b, lo);
      r[i + H] = __builtin_shuffle(a, b, hi);
    }
    transpose_stages<T, W, H / 2>(r);
  }
}

template <typename T, int W>
static inline void transpose(typename VecOf<T, W>::type* r) {
  transpose_stages<T, W, W / 2>(r);
}

// W consecutive samples of one row converted to mV; invalid samples become NaN.
template <typename T, int IT, int W>
static inline typename VecOf<T, W>::type load_mv(const void* xrow, int64_t t, T inv_gain, T base) {
  typedef typename VecOf<T, W>::type vec;
  const vec nan = vec{} + T(__builtin_nan(""));
  vec raw;
  if constexpr (IT == kInt16) {
    typedef typename VecOf<int16_t, W>::type i16vec;
    i16vec q;
    std::memcpy(&q, static_cast<const int16_t*>(xrow) + t, sizeof(q));
    raw = __builtin_convertvector(q, vec);
    const vec v = (raw - base) * inv_gain;
    return raw == T(spec::kInvalidInt16) ? nan : v;
  } else {
    if constexpr (IT == kFloat || IT == kDouble) {
      std::memcpy(&raw, static_cast<const T*>(xrow) + t, sizeof(raw));
    } else if constexpr (IT == kBFloat16) {
      typedef typename VecOf<uint16_t, W>::type u16vec;
      typedef typename VecOf<uint32_t, W>::type u32vec;
      u16vec q;
      std::memcpy(&q, static_cast<const uint16_t*>(xrow) + t, sizeof(q));
      const u32vec bits = __builtin_convertvector(q, u32vec) << 16;
      std::memcpy(&raw, &bits, sizeof(raw));
    } else {
      for (int i = 0; i < W; ++i) raw[i] = half_to_float(static_cast<const uint16_t*>(xrow)[t + i]);
    }
    const vec v = (raw - base) * inv_gain;
    return (v - v == T(0)) ? v : nan;  // inf and NaN are invalid
  }
}

// Interpolates the NaN-marked invalid samples of one column (rare path).
template <typename T>
static void repair_row(int64_t n, T* col, int64_t R) {
  auto invalid = [&](int64_t t) { return !__builtin_isfinite(col[t * R]); };
  int64_t prev = -1;  // last valid index
  int64_t t = 0;
  while (t < n) {
    if (!invalid(t)) {
      prev = t++;
      continue;
    }
    int64_t end = t;
    while (end < n && invalid(end)) ++end;  // [t, end) is an invalid run
    if (prev < 0) {
      for (int64_t k = t; k < end; ++k) col[k * R] = col[end * R];  // leading run: first valid value
    } else if (end == n) {
      for (int64_t k = t; k < end; ++k) col[k * R] = col[prev * R];  // trailing run: last valid value
    } else {
      const T a = col[prev * R], b = col[end * R];
      const T span = T(end - prev);
      for (int64_t k = t; k < end; ++k) col[k * R] = a + (b - a) * (T(k - prev) / span);
    }
    t = end;
  }
}

template <typename T, int MAXS>
struct Sections {
  T b0[MAXS], b1[MAXS], b2[MAXS], d1[MAXS], d2[MAXS], zi0[MAXS], zi1[MAXS];  // d1 = a1 + 2, d2 = 1 - a2
};

// One direction of a cascade of S sections (transposed direct form II) over `count` rows of buf from
// row `begin`, stepping by `step` (+1 forward, -1 backward), in place, computing in C (T or double).
// Each row of R lanes is VC vectors of WC lanes of C (native width: a float vector splits into two
// double vectors). Initial state zi * x0 (x0 = the cascade's input edge).
template <typename T, typename C, int WC, int VC, int S>
static void cascade(T* buf, int64_t R, int64_t begin, int64_t count, int64_t step, const Sections<C, 8>& c,
                    const T* x0) {
  typedef typename VecOf<T, WC>::type vec;
  typedef typename VecOf<C, WC>::type cvec;
  cvec z0[S][VC], z1[S][VC];
  for (int v = 0; v < VC; ++v) {
    vec e;
    std::memcpy(&e, x0 + v * WC, sizeof(e));
    for (int s = 0; s < S; ++s) {
      z0[s][v] = __builtin_convertvector(e, cvec) * c.zi0[s];
      z1[s][v] = __builtin_convertvector(e, cvec) * c.zi1[s];
    }
  }
  T* p = buf + begin * R;
  const int64_t stride = step * R;
  for (int64_t i = 0; i < count; ++i, p += stride) {
    for (int v = 0; v < VC; ++v) {
      cvec x = __builtin_convertvector(*reinterpret_cast<vec*>(p + v * WC), cvec);
      for (int s = 0; s < S; ++s) {
        // a1 = d1 - 2, a2 = 1 - d2: keeps the precision of poles near z = 1
        const cvec y = c.b0[s] * x + z0[s][v];
        z0[s][v] = (c.b1[s] * x + z1[s][v]) + ((y + y) - c.d1[s] * y);
        z1[s][v] = (c.b2[s] * x - y) + c.d2[s] * y;
        x = y;
      }
      *reinterpret_cast<vec*>(p + v * WC) = __builtin_convertvector(x, vec);
    }
  }
}

template <typename C>
static Sections<C, 8> load_sections(const Problem& p, int s0, int S) {
  Sections<C, 8> c;
  for (int s = 0; s < S; ++s) {
    const double* q = p.sos + (s0 + s) * 6;
    const double inv_a0 = 1.0 / q[3];
    c.b0[s] = C(q[0] * inv_a0), c.b1[s] = C(q[1] * inv_a0), c.b2[s] = C(q[2] * inv_a0);
    c.d1[s] = C(q[4] * inv_a0 + 2.0), c.d2[s] = C(1.0 - q[5] * inv_a0);
    c.zi0[s] = C(p.zi[(s0 + s) * 2]), c.zi1[s] = C(p.zi[(s0 + s) * 2 + 1]);
  }
  return c;
}

template <typename T, typename C, int W, int V>
static void cascade_group(const Problem& p, int s0, int S, T* buf, int64_t R, int64_t begin, int64_t count,
                          int64_t step, const T* x0) {
  constexpr int WC = int(W * sizeof(T) / sizeof(C)), VC = int(V * sizeof(C) / sizeof(T));
  const Sections<C, 8> c = load_sections<C>(p, s0, S);
  switch (S) {
    case 1: cascade<T, C, WC, VC, 1>(buf, R, begin, count, step, c, x0); break;
    case 2: cascade<T, C, WC, VC, 2>(buf, R, begin, count, step, c, x0); break;
    case 3: cascade<T, C, WC, VC, 3>(buf, R, begin, count, step, c, x0); break;
    case 4: cascade<T, C, WC, VC, 4>(buf, R, begin, count, step, c, x0); break;
    default: cascade<T, C, WC, VC, 5>(buf, R, begin, count, step, c, x0); break;
  }
}

// A section whose poles are near z = 1 (|A(1)| = |1 - p1||1 - p2| small: the 0.5 Hz high-pass) amplifies
// float32 state round-off by ~1/(1 - |p|)^1.5; such sections run in double even for float32 data.
static inline bool needs_double(const double* q) {
  const double a1 = q[4] / q[3], a2 = q[5] / q[3];
  return 1.0 + a1 + a2 < 1e-2;
}

// The whole cascade in one direction, as consecutive groups of up to 5 sections of the same precision.
// Every group starts from zi * (the cascade's input edge), as sosfilt's per-section zi assumes.
template <typename T, int W, int V>
static void cascade_all(const Problem& p, T* buf, int64_t R, int64_t begin, int64_t count, int64_t step,
                        const T* x0) {
  for (int s0 = 0; s0 < p.S;) {
    const bool dbl = sizeof(T) == 8 || needs_double(p.sos + s0 * 6);
    int S = 1;
    while (s0 + S < p.S && S < 5 && (sizeof(T) == 8 || needs_double(p.sos + (s0 + S) * 6)) == dbl) ++S;
    if (dbl) cascade_group<T, double, W, V>(p, s0, S, buf, R, begin, count, step, x0);
    else cascade_group<T, T, W, V>(p, s0, S, buf, R, begin, count, step, x0);
    s0 += S;
  }
}

template <typename T, int IT, int W, int V>
static void run_block_typed(const Problem& p, int64_t row0, void* scratch) {
  typedef typename VecOf<T, W>::type vec;
  constexpr int64_t R = int64_t(W) * V;
  const int64_t n = p.T, P = p.pad, L = n + 2 * P;
  const int64_t rows = (p.n_rows - row0) < R ? (p.n_rows - row0) : R;
  T* buf = static_cast<T*>(scratch);  // [L][R]; the signal is rows [P, P + n)

  // 1-2. Convert each row into its lane (with repair), and find flat / all-invalid rows.
  const int64_t in_elem = (IT == kDouble) ? 8 : (IT == kFloat ? 4 : 2);
  bool dead[R];
  int32_t flags[R];
  RowInfo info[R];
  T inv_gain[R], base[R];
  for (int64_t r = 0; r < rows; ++r) {
    inv_gain[r] = T(1) / T(p.gain[row0 + r]);
    base[r] = T(p.baseline[row0 + r]);
  }
  {
    // W x W tiles: W rows x W samples loaded as vectors, converted, transposed in registers, stored as
    // W time steps of the block; per-row min/max/invalid counts stay in vectors until the end.
    typedef decltype(vec{} != vec{}) ivec;
    vec lo_v[R], hi_v[R];
    ivec bad_v[R];
    for (int64_t r = 0; r < R; ++r) {
      lo_v[r] = vec{} + T(sizeof(T) == 4 ? 3.0e38 : 1.0e300);
      hi_v[r] = -lo_v[r];
      bad_v[r] = ivec{};
    }
    const char* xblock = static_cast<const char*>(p.x) + row0 * n * in_elem;
    const int64_t n_full = n / W * W;
    for (int64_t t0 = 0; t0 < n_full; t0 += W) {
      for (int v = 0; v < V; ++v) {
        vec tile[W];
        for (int i = 0; i < W; ++i) {
          const int64_t r = int64_t(v) * W + i;
          if (r >= rows) {
            tile[i] = vec{};
            continue;
          }
          const char* xrow = xblock + r * n * in_elem;
          __builtin_prefetch(xrow + (t0 + 16 * W) * in_elem);  // 32 rows stream in at once: help the prefetcher
          const vec x = load_mv<T, IT, W>(xrow, t0, inv_gain[r], base[r]);
          lo_v[r] = x < lo_v[r] ? x : lo_v[r];  // NaN compares false: invalid samples are skipped
          hi_v[r] = x > hi_v[r] ? x : hi_v[r];
          bad_v[r] -= (x != x);
          tile[i] = x;
        }
        transpose<T, W>(tile);
        for (int i = 0; i < W; ++i) *reinterpret_cast<vec*>(buf + (P + t0 + i) * R + v * W) = tile[i];
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      T* col = buf + P * R + r;
      if (r >= rows) {
        for (int64_t t = n_full; t < n; ++t) col[t * R] = T(0);
        continue;
      }
      for (int w = 0; w < W; ++w) {
        info[r].lo = double(lo_v[r][w]) < info[r].lo ? double(lo_v[r][w]) : info[r].lo;
        info[r].hi = double(hi_v[r][w]) > info[r].hi ? double(hi_v[r][w]) : info[r].hi;
        info[r].n_bad += int64_t(bad_v[r][w]);
      }
      if (n_full < n)
        convert_span<T, IT, W>(xblock + r * n * in_elem, n_full, n - n_full, inv_gain[r], base[r], col, R, info[r]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    T* col = buf + P * R + r;
    if (r >= rows) {
      dead[r] = true;
      flags[r] = 0;
      continue;
    }
    flags[r] = info[r].n_bad > 0 ? 1 : 0;
    dead[r] = info[r].n_bad == n || info[r].hi - info[r].lo <= spec::kFlatPtp;
    if (dead[r]) {
      for (int64_t t = 0; t < n; ++t) col[t * R] = T(0);
      flags[r] |= 2;
    } else if (info[r].n_bad > 0) {
      repair_row<T>(n, col, R);
    }
  }

  // 3. Zero-phase filter: odd extension, forward over everything, backward over what is kept.
  if (p.S > 0) {
    const T* first = buf + P * R;
    const T* last = buf + (P + n - 1) * R;
    for (int64_t j = 1; j <= P; ++j) {
      for (int v = 0; v < V; ++v) {
        const vec f = *reinterpret_cast<const vec*>(first + v * W);
        const vec l = *reinterpret_cast<const vec*>(last + v * W);
        *reinterpret_cast<vec*>(buf + (P - j) * R + v * W) =
            T(2) * f - *reinterpret_cast<const vec*>(first + j * R + v * W);
        *reinterpret_cast<vec*>(buf + (P + n - 1 + j) * R + v * W) =
            T(2) * l - *reinterpret_cast<const vec*>(last - j * R + v * W);
      }
    }
    alignas(64) T edge[R];
    for (int64_t r = 0; r < R; ++r) edge[r] = buf[r];
    cascade_all<T, W, V>(p, buf, R, 0, L, +1, edge);
    for (int64_t r = 0; r < R; ++r) edge[r] = buf[(L - 1) * R + r];
    cascade_all<T, W, V>(p, buf, R, L - 1, L - P, -1, edge);  // stops at row P: the left pad is dropped
  }

  // 4. Polyphase resampling into the second half of the scratch.
  const T* y = buf + P * R;
  int64_t n_out = n;
  if (p.up != 1 || p.down != 1) {
    T* o = buf + L * R;
    const int64_t half = (p.K - 1) / 2;
    n_out = p.T_out;
    T taps[1024];
    const bool small = p.K <= 1024;
    for (int64_t k = 0; small && k < p.K; ++k) taps[k] = T(p.fir[k]);
    for (int64_t m = 0; m < n_out; ++m) {
      const int64_t m0 = m * p.down + half;
      const int64_t ph = m0 % p.up, q = m0 / p.up;
      int64_t j_hi = (p.K - 1 - ph) / p.up;  // taps ph + j*up < K
      if (j_hi > q) j_hi = q;                // y index q - j >= 0
      const int64_t j_lo = q - (n - 1) > 0 ? q - (n - 1) : 0;  // y index q - j < n
      vec acc[V];
      for (int v = 0; v < V; ++v) acc[v] = vec{} + T(0);
      for (int64_t j = j_lo; j <= j_hi; ++j) {
        const int64_t k = ph + j * p.up;
        const T h = small ? taps[k] : T(p.fir[k]);
        const T* src = y + (q - j) * R;
        for (int v = 0; v < V; ++v) acc[v] += h * *reinterpret_cast<const vec*>(src + v * W);
      }
      for (int v = 0; v < V; ++v) *reinterpret_cast<vec*>(o + m * R + v * W) = acc[v];
    }
    y = o;
  }

  // 5. z-score statistics per lane (two passes, sums in double).
  T shift[R], scale[R];
  for (int64_t r = 0; r < R; ++r) shift[r] = T(0), scale[r] = T(1);
  if (p.zscore && n_out > 0) {
    double sum[R], ss[R];
    for (int64_t r = 0; r < R; ++r) sum[r] = 0, ss[r] = 0;
    constexpr int64_t chunk = 64;  // partial sums in T over short chunks, then in double
    for (int64_t m0 = 0; m0 < n_out; m0 += chunk) {
      const int64_t m1 = m0 + chunk < n_out ? m0 + chunk : n_out;
      vec acc[V];
      for (int v = 0; v < V; ++v) acc[v] = vec{} + T(0);
      for (int64_t m = m0; m < m1; ++m)
        for (int v = 0; v < V; ++v) acc[v] += *reinterpret_cast<const vec*>(y + m * R + v * W);
      for (int v = 0; v < V; ++v)
        for (int w = 0; w < W; ++w) sum[v * W + w] += double(acc[v][w]);
    }
    alignas(64) T mean[R];
    for (int64_t r = 0; r < R; ++r) mean[r] = T(sum[r] / double(n_out));
    for (int64_t m0 = 0; m0 < n_out; m0 += chunk) {
      const int64_t m1 = m0 + chunk < n_out ? m0 + chunk : n_out;
      vec acc[V];
      for (int v = 0; v < V; ++v) acc[v] = vec{} + T(0);
      for (int64_t m = m0; m < m1; ++m)
        for (int v = 0; v < V; ++v) {
          const vec d = *reinterpret_cast<const vec*>(y + m * R + v * W) -
                        *reinterpret_cast<const vec*>(mean + v * W);
          acc[v] += d * d;
        }
      for (int v = 0; v < V; ++v)
        for (int w = 0; w < W; ++w) ss[v * W + w] += double(acc[v][w]);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const double sd = __builtin_sqrt(ss[r] / double(n_out));
      shift[r] = mean[r];
      if (sd <= spec::kZeroScale) {
        dead[r] = true;
        flags[r] |= 2;
      } else {
        scale[r] = T(1.0 / sd);
      }
    }
  }

  // 6. Write each output row once: W x W tiles transposed back in registers, then a tail.
  T* out = static_cast<T*>(p.out);
  const int64_t m_full = n_out / W * W;
  for (int64_t m0 = 0; m0 < m_full; m0 += W) {
    for (int v = 0; v < V; ++v) {
      vec tile[W];
      for (int i = 0; i < W; ++i) tile[i] = *reinterpret_cast<const vec*>(y + (m0 + i) * R + v * W);
      transpose<T, W>(tile);
      for (int i = 0; i < W; ++i) {
        const int64_t r = int64_t(v) * W + i;
        if (r >= rows) break;
        const vec o = dead[r] ? vec{} : (tile[i] - shift[r]) * scale[r];
        std::memcpy(out + (row0 + r) * n_out + m0, &o, sizeof(o));
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* dst = out + (row0 + r) * n_out;
    for (int64_t m = m_full; m < n_out; ++m) dst[m] = dead[r] ? T(0) : (y[m * R + r] - shift[r]) * scale[r];
  }
  for (int64_t r = 0; r < rows; ++r) p.flags[row0 + r] = flags[r];
}

template <typename T, int W, int V>
static void run_block(const Problem& p, int64_t row0, void* scratch) {
  if constexpr (sizeof(T) == 8) {
    run_block_typed<double, kDouble, W, V>(p, row0, scratch);
  } else {
    switch (p.input_type) {
      case kHalf: run_block_typed<float, kHalf, W, V>(p, row0, scratch); break;
      case kBFloat16: run_block_typed<float, kBFloat16, W, V>(p, row0, scratch); break;
      case kInt16: run_block_typed<float, kInt16, W, V>(p, row0, scratch); break;
      default: run_block_typed<float, kFloat, W, V>(p, row0, scratch); break;
    }
  }
}
