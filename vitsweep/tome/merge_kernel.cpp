// ToMe's merge step as one C++ call (issue #35): `vitsweep.tome.fused.merge_step`'s matching
// and size-weighted merge, for eager CPU inference. The matching runs the same ATen ops as
// merge_step (so the same tokens are chosen); the merge is plain loops over rows: copy the
// kept rows, then recompute each receiving B token from itself and its sources.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// Where each output row comes from, per image: `keep` (m input rows), and for each of the r
// merged A tokens its input row `src` and the output row `dst` of the B token it joins.
struct Plan {
  int64_t batch, n, m, r;
  std::vector<int64_t> keep, src, dst;  // batch * m, batch * r, batch * r
};

Plan match(const at::Tensor& metric, int64_t r, int64_t p) {
  const int64_t batch = metric.size(0), n = metric.size(1);
  const int64_t first_a = p + p % 2, first_b = p + 1 - p % 2;
  const int64_t num_a = std::max<int64_t>(n - first_a + 1, 0) / 2;
  const auto acc = metric.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor k = metric.to(acc);
  k = k / k.norm(2, {-1}, true).clamp_min(1e-12);
  at::Tensor scores = at::matmul(k.slice(1, first_a, n, 2), k.slice(1, first_b, n, 2).mT());
  auto [best, best_b] = scores.max(-1);
  // argsort as merge_step calls it, so that ties break the same way
  at::Tensor order = best.argsort(-1, true).contiguous();
  best_b = best_b.contiguous();
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* bb = best_b.data_ptr<int64_t>();
  Plan plan{batch, n, n - r, r, {}, {}, {}};
  plan.keep.resize(batch * plan.m);
  plan.src.resize(batch * r);
  plan.dst.resize(batch * r);
  const int64_t first_out_b = p + num_a - r;  // output row of the first B token
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* o = ord + b * num_a;
    int64_t* keep = plan.keep.data() + b * plan.m;
    for (int64_t j = 0; j < p; ++j) keep[j] = j;
    std::vector<int64_t> unm(o + r, o + num_a);
    if (p > 0) std::sort(unm.begin(), unm.end());  // back to position order, as published
    for (size_t j = 0; j < unm.size(); ++j) keep[p + j] = first_a + 2 * unm[j];
    for (int64_t j = first_b, out = first_out_b; j < n; j += 2, ++out) keep[out] = j;
    for (int64_t i = 0; i < r; ++i) {
      plan.src[b * r + i] = first_a + 2 * o[i];
      plan.dst[b * r + i] = first_out_b + bb[b * num_a + o[i]];
    }
  }
  return plan;
}

// One tensor (batch, n, ch) merged by the plan with the sizes `in_s` (batch * n, float/double)
// and the receivers' new sizes `new_s` (batch * m, only receivers' entries are read).
template <typename scalar_t, typename acc_t>
at::Tensor merge_rows(const at::Tensor& t, const Plan& plan, const acc_t* in_s,
                      const acc_t* new_s) {
  const int64_t ch = t.size(2), n = plan.n, m = plan.m, r = plan.r;
  at::Tensor src_t = t.contiguous();
  at::Tensor out = at::empty({plan.batch, m, ch}, t.options());
  const scalar_t* in = src_t.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  at::parallel_for(0, plan.batch, 1, [&](int64_t lo, int64_t hi) {
    std::vector<acc_t> sum(ch);
    std::vector<char> done(m);
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t* keep = plan.keep.data() + b * m;
      for (int64_t j = 0; j < m; ++j)
        std::memcpy(o + (b * m + j) * ch, in + (b * n + keep[j]) * ch, ch * sizeof(scalar_t));
      std::fill(done.begin(), done.end(), 0);
      for (int64_t i = 0; i < r; ++i) {
        const int64_t d = plan.dst[b * r + i];
        if (done[d]) continue;  // a receiver chosen twice is computed once, from all sources
        done[d] = 1;
        const int64_t recv = b * n + keep[d];
        const acc_t rs = in_s ? in_s[recv] : acc_t(1);
        const scalar_t* xr = in + recv * ch;
        for (int64_t c = 0; c < ch; ++c) sum[c] = static_cast<acc_t>(xr[c]) * rs;
        for (int64_t k = i; k < r; ++k) {
          if (plan.dst[b * r + k] != d) continue;
          const int64_t s = b * n + plan.src[b * r + k];
          const acc_t ss = in_s ? in_s[s] : acc_t(1);
          const scalar_t* xs = in + s * ch;
          for (int64_t c = 0; c < ch; ++c) sum[c] += static_cast<acc_t>(xs[c]) * ss;
        }
        const acc_t total = new_s[b * m + d];
        scalar_t* od = o + (b * m + d) * ch;
        for (int64_t c = 0; c < ch; ++c) od[c] = static_cast<scalar_t>(sum[c] / total);
      }
    }
  });
  return out;
}

template <typename acc_t>
at::Tensor merged_sizes(const Plan& plan, const acc_t* in_s, at::TensorOptions opts) {
  const int64_t n = plan.n, m = plan.m, r = plan.r;
  at::Tensor out = at::empty({plan.batch, m, 1}, opts);
  acc_t* o = out.data_ptr<acc_t>();
  for (int64_t b = 0; b < plan.batch; ++b) {
    const int64_t* keep = plan.keep.data() + b * m;
    for (int64_t j = 0; j < m; ++j) o[b * m + j] = in_s ? in_s[b * n + keep[j]] : acc_t(1);
    for (int64_t i = 0; i < r; ++i) {  // a receiver: its own size (copied above) + its sources'
      const int64_t s = b * n + plan.src[b * r + i];
      o[b * m + plan.dst[b * r + i]] += in_s ? in_s[s] : acc_t(1);
    }
  }
  return out;
}

template <typename acc_t>
std::vector<at::Tensor> run(const at::Tensor& metric, const at::Tensor& x,
                            const std::optional<at::Tensor>& size, int64_t r, int64_t p,
                            const std::vector<at::Tensor>& extras, at::ScalarType acc) {
  const Plan plan = match(metric, r, p);
  at::Tensor in_size;
  const acc_t* in_s = nullptr;
  if (size.has_value()) {
    in_size = size->to(acc).contiguous();
    in_s = in_size.data_ptr<acc_t>();
  }
  at::Tensor out_size = merged_sizes<acc_t>(plan, in_s, x.options().dtype(acc));
  const acc_t* new_s = out_size.data_ptr<acc_t>();
  std::vector<at::Tensor> out;
  auto merge = [&](const at::Tensor& t) {
    at::Tensor res;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "tome_merge", [&] {
      res = merge_rows<scalar_t, acc_t>(t, plan, in_s, new_s);
    });
    return res;
  };
  out.push_back(merge(x));
  out.push_back(out_size);
  for (const auto& e : extras) out.push_back(merge(e));
  return out;
}

}  // namespace

// (x, size, *extras) merged: the output of merge_step(metric, x, size, r, num_prefix, extras)
// for 0 < r <= max_merge (the caller caps r and handles r == 0).
std::vector<at::Tensor> merge_step(const at::Tensor& metric, const at::Tensor& x,
                                   const std::optional<at::Tensor>& size, int64_t r,
                                   int64_t num_prefix, const std::vector<at::Tensor>& extras) {
  TORCH_CHECK(metric.device().is_cpu() && x.device().is_cpu(), "tome merge kernel: CPU only");
  TORCH_CHECK(metric.dim() == 3 && x.dim() == 3 && metric.size(0) == x.size(0) &&
                  metric.size(1) == x.size(1),
              "tome merge kernel: metric and x must be (batch, tokens, features)");
  if (x.scalar_type() == at::kDouble) {
    return run<double>(metric, x, size, r, num_prefix, extras, at::kDouble);
  }
  return run<float>(metric, x, size, r, num_prefix, extras, at::kFloat);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("merge_step", &merge_step, "ToMe matching and size-weighted merge (CPU)");
}
