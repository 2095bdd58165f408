// FASA's global branch and interaction for CPU inference, one pass per query tile:
//   out = interact(local, softmax(q K^T / sqrt(D)) V)   (out = the attention alone when there is no local branch)
// on channels_last maps, where K/V have few positions (49 on FAT-B0's 224 input). torch's SDPA is built for long
// key sequences: with 16-wide heads and 49 keys it spends most of its time on row-wise reductions and padding. Here
// each vector lane holds one query (a tile is the transpose of kW queries), so the softmax over the keys is plain
// lane-wise max / exp / sum, and the interaction runs while the tile is still in cache, which also saves the
// separate SDPA output, transpose and gating passes. Built on first use by fat/models/native.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#include <limits>
#include <vector>

namespace {
using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();  // queries per tile: one vector lane each
constexpr int64_t kTilesPerTask = 4;
constexpr int kU = 8;                // independent accumulators in flight

inline Vec sigmoid(const Vec& x) { return Vec(1.f) / (Vec(1.f) + x.neg().exp_u20()); }

struct Buffers {
  std::vector<float> k, v, qt, s, ot, o;
  Buffers(int64_t D, int64_t M) : k(M * D), v(M * D), qt(D * kW), s(M * kW), ot(D * kW), o(kW * D) {}
};

// One tile of T <= kW queries of one head, transposed so that each vector lane is one query: softmax over the
// keys then needs no horizontal reduction.
inline void tile(Buffers& buf, const float* q, const float* loc, float* out, int64_t C, int64_t D, int64_t M,
                 int64_t T, int interaction) {
  at::vec::transpose_mxn<float>(q, C, buf.qt.data(), kW, T, D);  // qt[d][t]
  const float* k = buf.k.data();
  const float* qt = buf.qt.data();
  float* s = buf.s.data();
  int64_t m = 0;
  for (; m + kU <= M; m += kU) {  // s[m][t] = sum_d k[m][d] q[t][d]
    Vec acc[kU];
    for (int u = 0; u < kU; ++u) acc[u] = Vec(0.f);
    for (int64_t d = 0; d < D; ++d) {
      const Vec qd = Vec::loadu(qt + d * kW);
      for (int u = 0; u < kU; ++u) acc[u] = at::vec::fmadd(Vec(k[(m + u) * D + d]), qd, acc[u]);
    }
    for (int u = 0; u < kU; ++u) acc[u].store(s + (m + u) * kW);
  }
  for (; m < M; ++m) {
    Vec acc(0.f);
    for (int64_t d = 0; d < D; ++d) acc = at::vec::fmadd(Vec(k[m * D + d]), Vec::loadu(qt + d * kW), acc);
    acc.store(s + m * kW);
  }
  Vec mx = Vec::loadu(s);  // softmax over m, lane by lane
  for (m = 1; m < M; ++m) mx = at::vec::maximum(mx, Vec::loadu(s + m * kW));
  Vec sum(0.f);
  for (m = 0; m < M; ++m) {
    const Vec e = (Vec::loadu(s + m * kW) - mx).exp_u20();
    e.store(s + m * kW);
    sum = sum + e;
  }
  const Vec inv = Vec(1.f) / sum;
  const float* v = buf.v.data();
  float* ot = buf.ot.data();
  int64_t d = 0;
  for (; d + kU <= D; d += kU) {  // ot[d][t] = sum_m v[m][d] p[m][t]
    Vec acc[kU];
    for (int u = 0; u < kU; ++u) acc[u] = Vec(0.f);
    for (m = 0; m < M; ++m) {
      const Vec p = Vec::loadu(s + m * kW);
      for (int u = 0; u < kU; ++u) acc[u] = at::vec::fmadd(Vec(v[m * D + d + u]), p, acc[u]);
    }
    for (int u = 0; u < kU; ++u) (acc[u] * inv).store(ot + (d + u) * kW);
  }
  for (; d < D; ++d) {
    Vec acc(0.f);
    for (m = 0; m < M; ++m) acc = at::vec::fmadd(Vec(v[m * D + d]), Vec::loadu(s + m * kW), acc);
    (acc * inv).store(ot + d * kW);
  }
  float* o = buf.o.data();
  at::vec::transpose_mxn<float>(ot, kW, o, D, D, T);  // o[t][d]
  for (int64_t t = 0; t < T; ++t) {  // the interaction with the local branch, row by row
    for (int64_t j = 0; j < D; j += kW) {
      const int64_t cnt = std::min(kW, D - j);
      const Vec g = Vec::loadu(o + t * D + j, cnt);
      Vec r = g;
      if (loc != nullptr) {
        const Vec l = Vec::loadu(loc + t * C + j, cnt);
        if (interaction == 1) r = l * (g * sigmoid(g));
        else if (interaction == 2) r = (l * sigmoid(g)) * (g * sigmoid(l));
        else r = l + g;
      }
      r.store(out + t * C + j, cnt);
    }
  }
}

at::Tensor fasa_attention(const at::Tensor& q_map, const at::Tensor& kv_map, int64_t num_heads, double scale,
                          const c10::optional<at::Tensor>& local_opt, c10::string_view interaction_name) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(q_map.dim() == 4 && kv_map.dim() == 4, "fasa_attention: 4-D maps expected");
  TORCH_CHECK(q_map.scalar_type() == at::kFloat && kv_map.scalar_type() == at::kFloat, "fasa_attention: float32 only");
  TORCH_CHECK(q_map.is_contiguous(cl) && kv_map.is_contiguous(cl), "fasa_attention: channels_last maps expected");
  const int64_t B = q_map.size(0), C = q_map.size(1), N = q_map.size(2) * q_map.size(3);
  const int64_t M = kv_map.size(2) * kv_map.size(3);
  TORCH_CHECK(kv_map.size(0) == B && kv_map.size(1) == 2 * C, "fasa_attention: K/V map must have 2C channels");
  TORCH_CHECK(C % num_heads == 0, "fasa_attention: channels not divisible by heads");
  const bool has_local = local_opt.has_value() && local_opt->defined();
  if (has_local) {
    TORCH_CHECK(local_opt->sizes() == q_map.sizes() && local_opt->scalar_type() == at::kFloat &&
                local_opt->is_contiguous(cl), "fasa_attention: local must match the query map");
  }
  // FASA's interactions (fat/variants.py): l * s(g) * g | (l * s(g)) * (g * s(l)) | l + g
  int interaction = 0;
  if (interaction_name == "one_way") interaction = 1;
  else if (interaction_name == "bidirectional") interaction = 2;
  else TORCH_CHECK(interaction_name == "none", "fasa_attention: unknown interaction ", interaction_name);
  const int64_t D = C / num_heads;
  at::Tensor out = at::empty_like(q_map, cl);
  const float* q = q_map.data_ptr<float>();
  const float* kv = kv_map.data_ptr<float>();
  const float* loc = has_local ? local_opt->data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  const int64_t tasks = (N + kW * kTilesPerTask - 1) / (kW * kTilesPerTask);
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, B * num_heads * tasks, 1, [&](int64_t begin, int64_t end) {
    Buffers buf(D, M);
    int64_t packed = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / tasks, h = bh % num_heads, b = bh / num_heads;
      if (bh != packed) {  // this image's and head's K (scaled) and V, contiguous
        for (int64_t m = 0; m < M; ++m) {
          const float* row = kv + (b * M + m) * 2 * C + h * D;
          for (int64_t d = 0; d < D; ++d) {
            buf.k[m * D + d] = row[d] * fscale;
            buf.v[m * D + d] = row[C + d];
          }
        }
        packed = bh;
      }
      const int64_t n_end = std::min(N, (task % tasks + 1) * kW * kTilesPerTask);
      for (int64_t n = (task % tasks) * kW * kTilesPerTask; n < n_end; n += kW) {
        const int64_t off = (b * N + n) * C + h * D;
        tile(buf, q + off, has_local ? loc + off : nullptr, o + off, C, D, M, std::min(kW, n_end - n), interaction);
      }
    }
  });
  return out;
}
}  // namespace

TORCH_LIBRARY(fat, m) {
  m.def("fasa_attention(Tensor q_map, Tensor kv_map, int num_heads, float scale, Tensor? local, str interaction) -> Tensor");
}
TORCH_LIBRARY_IMPL(fat, CPU, m) { m.impl("fasa_attention", fasa_attention); }
