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
  int64_t n_bad;
  double lo, hi;  // range of the valid samples
};

// Converts one row to mV, writing column `col` (stride R) of the transposed buffer. Invalid samples
// are written as NaN and counted.
template <typename T, int IT>
static RowInfo convert_row(const void* xrow, int64_t n, T inv_gain, T base, T* col, int64_t R) {
  T lo = T(sizeof(T) == 4 ? 3.0e38 : 1.0e300), hi = -lo;
  int64_t n_bad = 0;
  for (int64_t t = 0; t < n; ++t) {
    T v;
    bool bad;
    if constexpr (IT == kInt16) {
      const int16_t raw = static_cast<const int16_t*>(xrow)[t];
      bad = raw == -32768;
      v = (T(raw) - base) * inv_gain;
    } else {
      T raw;
      if constexpr (IT == kHalf) raw = T(half_to_float(static_cast<const uint16_t*>(xrow)[t]));
      else if constexpr (IT == kBFloat16) raw = T(bf16_to_float(static_cast<const uint16_t*>(xrow)[t]));
      else if constexpr (IT == kFloat) raw = T(static_cast<const float*>(xrow)[t]);
      else raw = T(static_cast<const double*>(xrow)[t]);
      v = (raw - base) * inv_gain;
      bad = !__builtin_isfinite(v);
    }
    lo = bad ? lo : (v < lo ? v : lo);
    hi = bad ? hi : (v > hi ? v : hi);
    n_bad += bad;
    col[t * R] = bad ? T(__builtin_nan("")) : v;  // marks the sample for repair_row
  }
  return RowInfo{n_bad, double(lo), double(hi)};
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
  T b0[MAXS], b1[MAXS], b2[MAXS], a1[MAXS], a2[MAXS], zi0[MAXS], zi1[MAXS];
};

// One direction of a cascade of S sections (transposed direct form II) over rows [begin, end) of buf,
// stepping by `step` (+1 forward, -1 backward), in place. Initial state zi * x0 (x0 = first input).
template <typename T, int W, int V, int S>
static void cascade(T* buf, int64_t R, int64_t begin, int64_t count, int64_t step, const Sections<T, 8>& c,
                    const T* x0) {
  typedef typename VecOf<T, W>::type vec;
  vec z0[S][V], z1[S][V];
  for (int v = 0; v < V; ++v) {
    const vec e = *reinterpret_cast<const vec*>(x0 + v * W);
    for (int s = 0; s < S; ++s) {
      z0[s][v] = e * c.zi0[s];
      z1[s][v] = e * c.zi1[s];
    }
  }
  T* p = buf + begin * R;
  const int64_t stride = step * R;
  for (int64_t i = 0; i < count; ++i, p += stride) {
    for (int v = 0; v < V; ++v) {
      vec x = *reinterpret_cast<vec*>(p + v * W);
      for (int s = 0; s < S; ++s) {
        const vec y = c.b0[s] * x + z0[s][v];
        z0[s][v] = (c.b1[s] * x + z1[s][v]) - c.a1[s] * y;
        z1[s][v] = c.b2[s] * x - c.a2[s] * y;
        x = y;
      }
      *reinterpret_cast<vec*>(p + v * W) = x;
    }
  }
}

template <typename T, int W, int V>
static void cascade_any(int S, T* buf, int64_t R, int64_t begin, int64_t count, int64_t step,
                        const Sections<T, 8>& c, const T* x0) {
  switch (S) {
    case 1: cascade<T, W, V, 1>(buf, R, begin, count, step, c, x0); break;
    case 2: cascade<T, W, V, 2>(buf, R, begin, count, step, c, x0); break;
    case 3: cascade<T, W, V, 3>(buf, R, begin, count, step, c, x0); break;
    case 4: cascade<T, W, V, 4>(buf, R, begin, count, step, c, x0); break;
    case 5: cascade<T, W, V, 5>(buf, R, begin, count, step, c, x0); break;
    default: cascade<T, W, V, 6>(buf, R, begin, count, step, c, x0); break;
  }
}

template <typename T, int IT, int W>
static void run_block_typed(const Problem& p, int64_t row0, void* scratch) {
  typedef typename VecOf<T, W>::type vec;
  constexpr int64_t R = sizeof(T) == 4 ? kRowsFloat : kRowsDouble;
  constexpr int V = int(R / W);
  const int64_t n = p.T, P = p.pad, L = n + 2 * P;
  const int64_t rows = (p.n_rows - row0) < R ? (p.n_rows - row0) : R;
  T* buf = static_cast<T*>(scratch);  // [L][R]; the signal is rows [P, P + n)

  // 1-2. Convert each row into its lane (with repair), and find flat / all-invalid rows.
  const int64_t in_elem = (IT == kDouble) ? 8 : (IT == kFloat ? 4 : 2);
  bool dead[R];
  int32_t flags[R];
  for (int64_t r = 0; r < R; ++r) {
    T* col = buf + P * R + r;
    if (r >= rows) {
      for (int64_t t = 0; t < n; ++t) col[t * R] = T(0);
      dead[r] = true;
      continue;
    }
    const int64_t row = row0 + r;
    const void* xrow = static_cast<const char*>(p.x) + row * n * in_elem;
    const T inv_gain = T(1) / T(p.gain[row]);
    const RowInfo info = convert_row<T, IT>(xrow, n, inv_gain, T(p.baseline[row]), col, R);
    flags[r] = info.n_bad > 0 ? 1 : 0;
    dead[r] = info.n_bad == n || info.hi - info.lo <= 1e-6;
    if (dead[r]) {
      for (int64_t t = 0; t < n; ++t) col[t * R] = T(0);
      flags[r] |= 2;
    } else if (info.n_bad > 0) {
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
    // Sections run in groups of up to 6 per pass; every group starts from zi * (cascade input edge).
    alignas(64) T edge[R];
    for (int64_t r = 0; r < R; ++r) edge[r] = buf[r];
    for (int s0 = 0; s0 < p.S; s0 += 6) {
      const int S = (p.S - s0) < 6 ? (p.S - s0) : 6;
      Sections<T, 8> c;
      for (int s = 0; s < S; ++s) {
        const double* q = p.sos + (s0 + s) * 6;
        const double inv_a0 = 1.0 / q[3];
        c.b0[s] = T(q[0] * inv_a0), c.b1[s] = T(q[1] * inv_a0), c.b2[s] = T(q[2] * inv_a0);
        c.a1[s] = T(q[4] * inv_a0), c.a2[s] = T(q[5] * inv_a0);
        c.zi0[s] = T(p.zi[(s0 + s) * 2]), c.zi1[s] = T(p.zi[(s0 + s) * 2 + 1]);
      }
      cascade_any<T, W, V>(S, buf, R, 0, L, +1, c, edge);
    }
    for (int64_t r = 0; r < R; ++r) edge[r] = buf[(L - 1) * R + r];
    for (int s0 = 0; s0 < p.S; s0 += 6) {
      const int S = (p.S - s0) < 6 ? (p.S - s0) : 6;
      Sections<T, 8> c;
      for (int s = 0; s < S; ++s) {
        const double* q = p.sos + (s0 + s) * 6;
        const double inv_a0 = 1.0 / q[3];
        c.b0[s] = T(q[0] * inv_a0), c.b1[s] = T(q[1] * inv_a0), c.b2[s] = T(q[2] * inv_a0);
        c.a1[s] = T(q[4] * inv_a0), c.a2[s] = T(q[5] * inv_a0);
        c.zi0[s] = T(p.zi[(s0 + s) * 2]), c.zi1[s] = T(p.zi[(s0 + s) * 2 + 1]);
      }
      cascade_any<T, W, V>(S, buf, R, L - 1, L - P, -1, c, edge);  // stops at row P
    }
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
      if (sd <= 1e-8) {
        dead[r] = true;
        flags[r] |= 2;
      } else {
        scale[r] = T(1.0 / sd);
      }
    }
  }

  // 6. Write each output row once (tiles of the transposed scratch stay in L1).
  T* out = static_cast<T*>(p.out);
  constexpr int64_t tile = 128;
  for (int64_t m0 = 0; m0 < n_out; m0 += tile) {
    const int64_t m1 = m0 + tile < n_out ? m0 + tile : n_out;
    for (int64_t r = 0; r < rows; ++r) {
      T* dst = out + (row0 + r) * n_out;
      if (dead[r]) {
        for (int64_t m = m0; m < m1; ++m) dst[m] = T(0);
        continue;
      }
      const T sh = shift[r], sc = scale[r];
      for (int64_t m = m0; m < m1; ++m) dst[m] = (y[m * R + r] - sh) * sc;
    }
  }
  for (int64_t r = 0; r < rows; ++r) p.flags[row0 + r] = flags[r];
}

template <typename T, int W>
static void run_block(const Problem& p, int64_t row0, void* scratch) {
  if constexpr (sizeof(T) == 8) {
    run_block_typed<double, kDouble, W>(p, row0, scratch);
  } else {
    switch (p.input_type) {
      case kHalf: run_block_typed<float, kHalf, W>(p, row0, scratch); break;
      case kBFloat16: run_block_typed<float, kBFloat16, W>(p, row0, scratch); break;
      case kInt16: run_block_typed<float, kInt16, W>(p, row0, scratch); break;
      default: run_block_typed<float, kFloat, W>(p, row0, scratch); break;
    }
  }
}
