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

constexpr int kMaxGroup = 5;  // sections per pass over the block (each pass loads and stores every sample once)
constexpr int kMaxDelta = 2;  // delta-form sections at the head of a pass

// The sections of one pass: `nd` delta-form sections, then `nt` transposed direct form II ones.
//
// Transposed direct form II (scipy's sosfilt): y = b0 x + z0, z0 = b1 x - a1 y + z1, z1 = b2 x - a2 y.
// Its float32 round-off grows like 1/(1 - |p|)^1.5 for poles p near z = 1 (the 0.5 Hz high-pass: 1e-3 of
// peak at 1000 Hz), so such sections run in delta form: direct form II with the state kept as
// u = e w (e = A(1) = 1 + a1 + a2) and dv = w[n] - w[n-1], which holds float32 to ~1e-6:
//   d = x - u - d2 dv,  dv += d,  u += e dv,  y = cs d + cv dv + cu u
// (d2 = 1 - a2; d is w's second difference, so y = b0 w[n] + b1 w[n-1] + b2 w[n-2] gives cs = b2,
// cv = -(b1 + 2 b2), cu = (b0 + b1 + b2) / e). Its steady state for a constant input x is u = x, dv = 0.
template <typename C>
struct Pass {
  int nd = 0, nt = 0;
  bool hp = true;  // every delta section has cv = cu = 0 (a second-order high-pass: y = cs s)
  C e[kMaxDelta], d2[kMaxDelta], cs[kMaxDelta], cv[kMaxDelta], cu[kMaxDelta], u0[kMaxDelta];
  C b0[kMaxGroup], b1[kMaxGroup], b2[kMaxGroup], a1[kMaxGroup], a2[kMaxGroup], zi0[kMaxGroup], zi1[kMaxGroup];
};

template <typename T, int W, int V, int ND, int NT>
struct CascadeState {
  typedef typename VecOf<T, W>::type vec;
  vec u[ND + 1][V], dv[ND + 1][V], z0[NT + 1][V], z1[NT + 1][V];
};

// `count` steps of one pass from row p (stride: +-R), in place; with SUM, also adds the outputs to acc.
// HP: every delta section is a high-pass with a double zero at z = 1 (cv = cu = 0: y = cs s).
template <typename T, int W, int V, int ND, bool HP, int NT, bool SUM>
static inline T* cascade_steps(CascadeState<T, W, V, ND, NT>& st, const Pass<T>& c, T* p, int64_t stride,
                               int64_t count, typename VecOf<T, W>::type* acc) {
  typedef typename VecOf<T, W>::type vec;
  for (int64_t i = 0; i < count; ++i, p += stride) {
    for (int v = 0; v < V; ++v) {
      vec x = *reinterpret_cast<vec*>(p + v * W);
      for (int s = 0; s < ND; ++s) {
        const vec d = (x - st.u[s][v]) - c.d2[s] * st.dv[s][v];
        st.dv[s][v] += d;
        st.u[s][v] += c.e[s] * st.dv[s][v];
        x = HP ? c.cs[s] * d : c.cs[s] * d + c.cv[s] * st.dv[s][v] + c.cu[s] * st.u[s][v];
      }
      for (int s = 0; s < NT; ++s) {
        const vec y = c.b0[s] * x + st.z0[s][v];
        st.z0[s][v] = (c.b1[s] * x + st.z1[s][v]) - c.a1[s] * y;
        st.z1[s][v] = c.b2[s] * x - c.a2[s] * y;
        x = y;
      }
      *reinterpret_cast<vec*>(p + v * W) = x;
      if constexpr (SUM) acc[v] += x;
    }
  }
  return p;
}

constexpr int64_t kSumChunk = 64;  // z-score sums: partial sums in T over this many samples, then in double

// One direction of one pass over `count` rows of buf from row `begin`, stepping by `step` (+1 forward,
// -1 backward), in place. Each row of R lanes is V vectors of W lanes. Every section starts in its steady
// state for the cascade's input edge x0 (zi * x0, as sosfilt's per-section zi; u0 * x0 in delta form).
// With `sum`, the outputs of steps [sum_from, count) are also summed per lane into sum[R] (the z-score's
// first pass, while the last pass of the backward direction produces them).
template <typename T, int W, int V, int ND, bool HP, int NT>
static void cascade(T* buf, int64_t R, int64_t begin, int64_t count, int64_t step, const Pass<T>& c, const T* x0,
                    int64_t sum_from, double* sum) {
  typedef typename VecOf<T, W>::type vec;
  CascadeState<T, W, V, ND, NT> st;
  for (int v = 0; v < V; ++v) {
    vec e;
    std::memcpy(&e, x0 + v * W, sizeof(e));
    for (int s = 0; s < ND; ++s) st.u[s][v] = e * c.u0[s], st.dv[s][v] = vec{};
    for (int s = 0; s < NT; ++s) st.z0[s][v] = e * c.zi0[s], st.z1[s][v] = e * c.zi1[s];
  }
  T* p = buf + begin * R;
  const int64_t stride = step * R;
  if (!sum) {
    cascade_steps<T, W, V, ND, HP, NT, false>(st, c, p, stride, count, nullptr);
    return;
  }
  p = cascade_steps<T, W, V, ND, HP, NT, false>(st, c, p, stride, sum_from, nullptr);
  for (int64_t i = sum_from; i < count; i += kSumChunk) {
    vec acc[V];
    for (int v = 0; v < V; ++v) acc[v] = vec{};
    p = cascade_steps<T, W, V, ND, HP, NT, true>(st, c, p, stride, count - i < kSumChunk ? count - i : kSumChunk, acc);
    for (int v = 0; v < V; ++v)
      for (int w = 0; w < W; ++w) sum[v * W + w] += double(acc[v][w]);
  }
}

// A section whose poles are near z = 1 (|A(1)| = |1 - p1||1 - p2| small): delta form in float32.
static inline bool near_z1(const double* q) { return (q[3] + q[4] + q[5]) / q[3] < spec::kNearZ1; }

// The next pass from section s0: up to kMaxDelta delta-form sections (float32 only; float64 keeps sosfilt's
// form throughout), then transposed-form ones, kMaxGroup in all. Coefficients in T, derived in double.
template <typename T>
static Pass<T> next_pass(const Problem& p, int s0) {
  Pass<T> c;
  double dc_in = 1.0;  // DC gain of the sections before s0: a delta section's steady input per unit x0
  for (int s = 0; s < s0; ++s) {
    const double* q = p.sos + s * 6;
    dc_in *= (q[0] + q[1] + q[2]) / (q[3] + q[4] + q[5]);
  }
  int s = s0;
  for (; sizeof(T) == 4 && s < p.S && c.nd < kMaxDelta && near_z1(p.sos + s * 6); ++s, ++c.nd) {
    const double* q = p.sos + s * 6;
    const double b0 = q[0] / q[3], b1 = q[1] / q[3], b2 = q[2] / q[3], a1 = q[4] / q[3], a2 = q[5] / q[3];
    const double e = 1.0 + a1 + a2;
    c.e[c.nd] = T(e), c.d2[c.nd] = T(1.0 - a2);
    c.cs[c.nd] = T(b2), c.cv[c.nd] = T(-(b1 + 2.0 * b2)), c.cu[c.nd] = T((b0 + b1 + b2) / e);
    c.u0[c.nd] = T(dc_in);
    c.hp = c.hp && c.cv[c.nd] == T(0) && c.cu[c.nd] == T(0);
    dc_in *= (b0 + b1 + b2) / e;
  }
  for (; s < p.S && c.nd + c.nt < kMaxGroup && !(sizeof(T) == 4 && near_z1(p.sos + s * 6)); ++s, ++c.nt) {
    const double* q = p.sos + s * 6;
    const double inv_a0 = 1.0 / q[3];
    c.b0[c.nt] = T(q[0] * inv_a0), c.b1[c.nt] = T(q[1] * inv_a0), c.b2[c.nt] = T(q[2] * inv_a0);
    c.a1[c.nt] = T(q[4] * inv_a0), c.a2[c.nt] = T(q[5] * inv_a0);
    c.zi0[c.nt] = T(p.zi[s * 2]), c.zi1[c.nt] = T(p.zi[s * 2 + 1]);
  }
  return c;
}

template <typename T, int W, int V, int ND, bool HP>
static void cascade_nt(T* buf, int64_t R, int64_t begin, int64_t count, int64_t step, const Pass<T>& c,
                       const T* x0, int64_t sum_from, double* sum) {
  switch (c.nt) {
    case 0: if constexpr (ND > 0) cascade<T, W, V, ND, HP, 0>(buf, R, begin, count, step, c, x0, sum_from, sum); break;
    case 1: cascade<T, W, V, ND, HP, 1>(buf, R, begin, count, step, c, x0, sum_from, sum); break;
    case 2: cascade<T, W, V, ND, HP, 2>(buf, R, begin, count, step, c, x0, sum_from, sum); break;
    case 3: cascade<T, W, V, ND, HP, 3>(buf, R, begin, count, step, c, x0, sum_from, sum); break;
    case 4: if constexpr (ND < 2) cascade<T, W, V, ND, HP, 4>(buf, R, begin, count, step, c, x0, sum_from, sum); break;
    default: if constexpr (ND < 1) cascade<T, W, V, ND, HP, 5>(buf, R, begin, count, step, c, x0, sum_from, sum); break;
  }
}

// The whole cascade in one direction, in passes of up to kMaxGroup sections (one pass for the default
// design: the high-pass in delta form, then the low-pass and the notch). `sum_from`, `sum`: see cascade
// (applied to the last pass).
template <typename T, int W, int V>
static void cascade_all(const Problem& p, T* buf, int64_t R, int64_t begin, int64_t count, int64_t step,
                        const T* x0, int64_t sum_from = 0, double* sum = nullptr) {
  for (int s0 = 0; s0 < p.S;) {
    const Pass<T> c = next_pass<T>(p, s0);
    s0 += c.nd + c.nt;
    double* pass_sum = s0 == p.S ? sum : nullptr;
    if constexpr (sizeof(T) == 4) {
      if (c.nd == 1 && c.hp) cascade_nt<T, W, V, 1, true>(buf, R, begin, count, step, c, x0, sum_from, pass_sum);
      else if (c.nd == 1) cascade_nt<T, W, V, 1, false>(buf, R, begin, count, step, c, x0, sum_from, pass_sum);
      else if (c.nd == 2 && c.hp) cascade_nt<T, W, V, 2, true>(buf, R, begin, count, step, c, x0, sum_from, pass_sum);
      else if (c.nd == 2) cascade_nt<T, W, V, 2, false>(buf, R, begin, count, step, c, x0, sum_from, pass_sum);
      else cascade_nt<T, W, V, 0, false>(buf, R, begin, count, step, c, x0, sum_from, pass_sum);
    } else {
      cascade_nt<T, W, V, 0, false>(buf, R, begin, count, step, c, x0, sum_from, pass_sum);
    }
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
    // W time steps of the block. The per-row min/max/invalid counts are taken after the transpose, where
    // a lane is a row: V vectors each, held in registers.
    typedef decltype(vec{} != vec{}) ivec;
    vec lo_v[V], hi_v[V];
    ivec bad_v[V];
    for (int v = 0; v < V; ++v) {
      lo_v[v] = vec{} + T(sizeof(T) == 4 ? 3.0e38 : 1.0e300);
      hi_v[v] = -lo_v[v];
      bad_v[v] = ivec{};
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
          tile[i] = load_mv<T, IT, W>(xrow, t0, inv_gain[r], base[r]);
        }
        transpose<T, W>(tile);
        for (int i = 0; i < W; ++i) {
          const vec x = tile[i];
          lo_v[v] = x < lo_v[v] ? x : lo_v[v];  // NaN compares false: invalid samples are skipped
          hi_v[v] = x > hi_v[v] ? x : hi_v[v];
          bad_v[v] -= (x != x);
          *reinterpret_cast<vec*>(buf + (P + t0 + i) * R + v * W) = x;
        }
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      T* col = buf + P * R + r;
      if (r >= rows) {
        for (int64_t t = n_full; t < n; ++t) col[t * R] = T(0);
        continue;
      }
      info[r].lo = double(lo_v[r / W][r % W]);
      info[r].hi = double(hi_v[r / W][r % W]);
      info[r].n_bad = int64_t(bad_v[r / W][r % W]);
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

  // 3. Zero-phase filter: odd extension, forward over everything, backward over what is kept. Without
  // resampling, the backward pass also takes the z-score's sums.
  const bool resample = p.up != 1 || p.down != 1;
  double sum[R];
  for (int64_t r = 0; r < R; ++r) sum[r] = 0;
  bool summed = false;
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
    summed = p.zscore && !resample;
    // stops at row P: the left pad is dropped; the right pad's P steps come before the output's
    cascade_all<T, W, V>(p, buf, R, L - 1, L - P, -1, edge, P, summed ? sum : nullptr);
  }

  // 4. Polyphase resampling into the second half of the scratch.
  const T* y = buf + P * R;
  int64_t n_out = n;
  if (resample) {
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

  // 5. z-score statistics per lane (two passes, sums in double; the first one taken by the filter).
  T shift[R], scale[R];
  for (int64_t r = 0; r < R; ++r) shift[r] = T(0), scale[r] = T(1);
  if (p.zscore && n_out > 0) {
    double ss[R];
    for (int64_t r = 0; r < R; ++r) ss[r] = 0;
    constexpr int64_t chunk = kSumChunk;
    for (int64_t m0 = 0; !summed && m0 < n_out; m0 += chunk) {
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

  // 6. Write each output row once: normalised while a lane is a row (per-lane shift and scale vectors,
  // dead rows exactly 0), W x W tiles transposed back in registers, then a tail.
  typedef decltype(vec{} != vec{}) ivec;
  vec shift_v[V], scale_v[V];
  ivec live_v[V];
  for (int v = 0; v < V; ++v)
    for (int w = 0; w < W; ++w) {
      shift_v[v][w] = shift[v * W + w], scale_v[v][w] = scale[v * W + w];
      live_v[v][w] = dead[v * W + w] ? 0 : -1;
    }
  T* out = static_cast<T*>(p.out);
  const int64_t m_full = n_out / W * W;
  for (int64_t m0 = 0; m0 < m_full; m0 += W) {
    for (int v = 0; v < V; ++v) {
      vec tile[W];
      for (int i = 0; i < W; ++i) {
        const vec o = (*reinterpret_cast<const vec*>(y + (m0 + i) * R + v * W) - shift_v[v]) * scale_v[v];
        tile[i] = live_v[v] ? o : vec{};
      }
      transpose<T, W>(tile);
      for (int i = 0; i < W && int64_t(v) * W + i < rows; ++i)
        std::memcpy(out + (row0 + int64_t(v) * W + i) * n_out + m0, &tile[i], sizeof(vec));
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
