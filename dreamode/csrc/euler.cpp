// The Euler rule of docs/dream-cell.md, fused per sample: dreamode.native's two operators.
//
// euler_forward runs the steps of one layer (optionally saving what the backward needs),
// euler_backward the reverse loop of the hand-written backward. The arrangement is the default
// path's (dreamode/_fast_euler.py: input projections for the whole sequence, the learned scalars
// in the small matrices MY, bY, ML, bL, U and U_target as one (B, 2, R, H) tensor), but a step is
// a few ATen calls (the products with the weight matrices and the tanh) and loops over the batch
// that do the rest per sample, in cache. Neither operator has an autograd kernel:
// dreamode/_fast_euler.py calls them where nothing needs a gradient, or inside its
// torch.autograd.Function. Compiled on demand by dreamode.native.build().
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

// sum_k a[k] * b[k], vectorised (a reduction: the order of the additions is the compiler's)
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// y += c * x
template <typename T>
inline void axpy(T* y, T c, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] += c * x[k];
}

struct Rates {
  double error, surprise, habituation, inv_tau_max, inv_tau_min, theta, target_norm;
};

// per-step values the backward needs, each (T, B, ·) (UU: the kept steps, (K, B, 2, R, H))
struct Saved {
  at::Tensor UU, pred, e, dev, ep, A, Q, HZ, Lin, DT, ht, eV, Mix, gain, rn, xt, XB, xV;
};

template <typename T>
T* row(const at::Tensor& t, int64_t i) {
  // pointer arithmetic, not t[i]: a tensor view costs about 1.5 µs, and a step takes dozens
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() + i * t.stride(0) : nullptr;
}

// U and U_target after step j from before it, as the forward computed them (padding: unchanged)
template <typename T>
void fast_weight_step(const T* src, T* dst, const T* mix, const T* eV, const T* gain, const T* dt, int64_t B,
                      int64_t R, int64_t H, bool mix_on, bool fw) {
  const int64_t RH = R * H;
  for (int64_t b = 0; b < B; ++b) {
    const T* U = src + b * 2 * RH;
    T* Ud = dst + b * 2 * RH;
    if (dt[b] == T(0) || !mix_on) {
      std::copy(U, U + 2 * RH, Ud);
      continue;
    }
    const T* M = mix + b * 4;
    for (int64_t r = 0; r < R; ++r) {
      const T* Ur = U + r * H;
      const T* Tr = U + RH + r * H;
      T* Uo = Ud + r * H;
      T* To = Ud + RH + r * H;
      const T g = fw ? eV[b * R + r] : T(0);
      const T* gb = fw ? gain + b * H : nullptr;
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) {
        const T u0 = Ur[c], t0 = Tr[c];
        Uo[c] = M[0] * u0 + M[1] * t0 + (fw ? g * gb[c] : T(0));
        To[c] = M[2] * u0 + M[3] * t0;
      }
    }
  }
}

template <typename T>
void forward_steps(const at::Tensor& hs_out, at::Tensor& UU, at::Tensor& em, at::Tensor& ev, at::Tensor& sc,
                   const at::Tensor& h0, const at::Tensor& xs, const at::Tensor& dts, const at::Tensor& ms,
                   const at::Tensor& xall_in,
                   const at::Tensor& C, const at::Tensor& Vt, const at::Tensor& BWV, const at::Tensor& WV,
                   const at::Tensor& negWV, const at::Tensor& BV, const at::Tensor& eta_t, const at::Tensor& MY_t,
                   const at::Tensor& bY_t, const at::Tensor& ML_t, const at::Tensor& bL_t, const Rates& k, bool fw,
                   bool mix, bool ltc, Saved* sv, int64_t every) {
  const int64_t T_ = xs.size(0), B = xs.size(1), I = xs.size(2);
  const int64_t H = C.size(0), R = Vt.size(0), RH = R * H;
  const bool masked = ms.defined();
  const T two_pi_e_over_I = static_cast<T>(2.0 * M_PI * M_E / static_cast<double>(I));
  const T eps = static_cast<T>(1e-6);
  const T* MY = MY_t.data_ptr<T>();  // (4, 2)
  const T* bY = bY_t.data_ptr<T>();  // (2,)
  const T* ML = ML_t.data_ptr<T>();  // (5, 8)
  const T* bL = bL_t.data_ptr<T>();  // (8,)
  const T* eta = eta_t.data_ptr<T>();
  const T* Vtp = Vt.data_ptr<T>();  // (R, I)

  at::Tensor xall = xall_in;  // [x B | x W | x V] (T, B, 2H + R)
  if (!masked && !xall.defined()) xall = at::mm(xs.reshape({T_ * B, I}), BWV).view({T_, B, 2 * H + R});
  auto opts = h0.options();
  // scratch for inference; with `sv` the step writes straight into the saved (T, B, ·) tensors
  at::Tensor P0 = sv ? at::Tensor() : at::empty({B, I}, opts), HT0 = sv ? at::Tensor() : at::empty({B, H}, opts);
  at::Tensor E0 = masked && !sv ? at::empty({B, I}, opts) : at::Tensor();
  at::Tensor XT0 = masked && !sv ? at::empty({B, I}, opts) : at::Tensor();
  at::Tensor EWV = at::empty({B, H + R}, opts);                                 // [e W | e V]
  at::Tensor XBV = masked ? at::empty({B, H + R}, opts) : at::Tensor();  // [x̃ B | x̃ V]
  std::vector<T> hU(static_cast<size_t>(R)), a(static_cast<size_t>(B)), gain(static_cast<size_t>(H));

  at::Tensor h = h0;
  T* emp = em.data_ptr<T>();
  T* evp = ev.data_ptr<T>();
  T* scp = sc.data_ptr<T>();
  for (int64_t i = 0; i < T_; ++i) {
    const T* hp = h.data_ptr<T>();
    const T* dtp = row<T>(dts, i);
    // U and U_target are updated in place; the backward recomputes them from every `every`-th
    if (sv && i % every == 0) sv->UU[i / every].copy_(UU);
    T* UUp = UU.data_ptr<T>();
    at::Tensor P = sv ? sv->pred[i] : P0;
    at::Tensor HT = sv ? sv->ht[i] : HT0;
    // pred = tanh(h C + (h Uᵀ) Vᵀ)
    at::mm_out(P, h, C);
    T* Pp = P.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const T* U = UUp + b * 2 * RH;
      for (int64_t r = 0; r < R; ++r) hU[r] = dot(hp + b * H, U + r * H, H);
      for (int64_t r = 0; r < R; ++r) axpy(Pp + b * I, hU[r], Vtp + r * I, I);
    }
    P.tanh_();
    const T* xp = row<T>(xs, i);
    const T *xB, *xV, *mp = nullptr;
    int64_t ldx;  // the row length of the arrays xB and xV point into
    T* Ep = sv ? row<T>(sv->e, i) : masked ? E0.data_ptr<T>() : nullptr;  // unmasked: e is computed per sample
    if (!masked) {
      at::Tensor xi = xall[i];
      at::addmm_out(EWV, xi.narrow(1, H, H + R), P, negWV);  // [x W | x V] − pred [W | V]
      xB = xi.data_ptr<T>();
      xV = xB + 2 * H;
      ldx = 2 * H + R;
    } else {
      mp = row<T>(ms, i);
      at::Tensor E = sv ? sv->e[i] : E0;
      at::Tensor XT = sv ? sv->xt[i] : XT0;
      T* xt = XT.data_ptr<T>();
      for (int64_t n = 0; n < B * I; ++n) {
        const T mx = mp[n] * xp[n];
        Ep[n] = mx - mp[n] * Pp[n];
        xt[n] = mx + (T(1) - mp[n]) * Pp[n];
      }
      at::mm_out(EWV, E, WV);
      at::mm_out(XBV, XT, BV);
      xB = XBV.data_ptr<T>();
      xV = xB + H;
      ldx = H + R;
    }
    const T* eWV = EWV.data_ptr<T>();
    T* up = HT.data_ptr<T>();
    T *sDev = nullptr, *sEp = nullptr, *sA = nullptr, *sQ = nullptr, *sHZ = nullptr, *sLin = nullptr, *sDT = nullptr,
      *seV = nullptr, *sMix = nullptr, *sGain = nullptr, *sRn = nullptr, *sXB = nullptr, *sxV = nullptr;
    if (sv) {
      sDev = row<T>(sv->dev, i), sEp = row<T>(sv->ep, i), sA = row<T>(sv->A, i), sQ = row<T>(sv->Q, i);
      sHZ = row<T>(sv->HZ, i), sLin = row<T>(sv->Lin, i), sDT = row<T>(sv->DT, i), seV = row<T>(sv->eV, i);
      sMix = row<T>(sv->Mix, i), sGain = row<T>(sv->gain, i), sRn = row<T>(sv->rn, i);
      sXB = row<T>(sv->XB, i), sxV = row<T>(sv->xV, i);
    }
    for (int64_t b = 0; b < B; ++b) {
      const T dt = dtp[b];
      const bool active = dt != T(0);  // padding (Δt = 0): the state stays, bit for bit
      T* U = UUp + b * 2 * RH;
      const T* Utg = U + RH;
      const T* hb = hp + b * H;
      const T* xb = xB + b * ldx;
      const T* xv = xV + b * ldx;
      const T* ew = eWV + b * (H + R);
      const T* eV = ew + H;
      T* u = up + b * H;
      // h̃ before the tanh: e W + (1 + κS)·x B + (x V) U; the U term first (U changes below)
      std::fill(u, u + H, T(0));
      for (int64_t r = 0; r < R; ++r) axpy(u, xv[r], U + r * H, H);
      // the error's statistics, and their Euler step
      T* emb = emp + b * I;
      T* evb = evp + b * I;
      const T* pb = Pp + b * I;
      const T* xb_in = xp + b * I;
      T* eb = Ep ? Ep + b * I : nullptr;
      T* devb = sv ? sDev + b * I : nullptr;
      T* epb = sv ? sEp + b * I : nullptr;
      T msum = T(0);
      if (masked) {
        for (int64_t j = 0; j < I; ++j) msum += mp[b * I + j];
        msum = std::max(msum, T(1));
      }
      const T beta = active ? dt * static_cast<T>(k.error) : T(0);
      T q = T(0), evsum = T(0);
      for (int64_t j = 0; j < I; ++j) {
        const T e = masked ? eb[j] : xb_in[j] - pb[j];
        if (!masked && sv) eb[j] = e;
        const T dev = e - emb[j];
        const T dev2 = dev * dev;
        const T ep = evb[j] + eps;
        const T z2 = dev2 / ep;
        if (sv) {
          devb[j] = dev;
          epb[j] = ep;
        }
        q += masked ? z2 * (mp[b * I + j] / msum) : z2;
        evsum += evb[j];
        if (active) {
          emb[j] += beta * (e - emb[j]);
          evb[j] += beta * (dev2 - evb[j]);
        }
      }
      if (!masked) q /= static_cast<T>(I);
      const T n = std::sqrt(q);
      const T A = eps + evsum * two_pi_e_over_I;
      T* s = scp + b * 2;
      const T Q[4] = {n, std::min(std::max(std::log(A), T(0)), T(4)), s[0], s[1]};
      T HZ[5];
      for (int c = 0; c < 2; ++c) {
        T y = bY[c];
        for (int j = 0; j < 4; ++j) y += Q[j] * MY[j * 2 + c];
        HZ[c] = T(1) / (T(1) + std::exp(-y));  // [S, g]
      }
      HZ[2] = HZ[3] = T(0);
      T rn[2] = {T(0), T(0)};
      if (fw) {  // relu(1 − N/‖U‖_F), relu(1 − N/‖U_target‖_F)
        const T N = static_cast<T>(k.target_norm);
        rn[0] = T(1) / std::sqrt(dot(U, U, RH));
        rn[1] = T(1) / std::sqrt(dot(Utg, Utg, RH));
        HZ[2] = std::max(T(1) - N * rn[0], T(0));
        HZ[3] = std::max(T(1) - N * rn[1], T(0));
      }
      HZ[4] = std::min(n, static_cast<T>(k.theta));
      T Lin[8], L[8];
      for (int c = 0; c < 8; ++c) {
        T v = bL[c];
        for (int j = 0; j < 5; ++j) v += HZ[j] * ML[j * 8 + c];
        Lin[c] = v;
        L[c] = c < 5 ? v * dt : v;  // [Δt/τ, Δt·S, kF, kH, Δt·ζg, 1 + κS, S, min(n, θ)]
      }
      T rate = L[0];
      if (ltc) {
        rate = std::min(std::max(rate, dt * static_cast<T>(k.inv_tau_max)), dt * static_cast<T>(k.inv_tau_min));
      }
      a[b] = active ? rate : T(0);
      const T kF = L[2], kH = L[3], cs = L[4];
      const T M[4] = {T(1) - kF - kH, kF, cs, T(1) - cs};
      if (fw) {
        for (int64_t c = 0; c < H; ++c) gain[c] = L[1] * hb[c] * eta[c];
      }
      if (sv) {
        sA[b] = A;
        std::copy(Q, Q + 4, sQ + b * 4);
        std::copy(HZ, HZ + 5, sHZ + b * 5);
        std::copy(Lin, Lin + 8, sLin + b * 8);
        std::copy(L, L + 8, sDT + b * 8);
        std::copy(eV, eV + R, seV + b * R);
        if (mix) std::copy(M, M + 4, sMix + b * 4);
        if (fw) {
          std::copy(gain.begin(), gain.end(), sGain + b * H);
          std::copy(rn, rn + 2, sRn + b * 2);
        }
        if (masked) {
          std::copy(xb, xb + H, sXB + b * H);
          std::copy(xv, xv + R, sxV + b * R);
        }
      }
      for (int64_t c = 0; c < H; ++c) u[c] += ew[c] + L[5] * xb[c];
      if (active) {
        s[0] += dt * static_cast<T>(k.surprise) * (L[6] - s[0]);
        s[1] += dt * static_cast<T>(k.habituation) * (L[7] - s[1]);
      }
      // fast weights: forgetting, homeostasis and sleep mix U and U_target; Hebbian term on U
      if (active && mix) fast_weight_step(U, U, M, eV, gain.data(), &dt, 1, R, H, mix, fw);
    }
    HT.tanh_();
    at::Tensor hn = hs_out[i];
    T* hnp = hn.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const T ab = a[b];
      const T* hb = hp + b * H;
      const T* ub = up + b * H;
      T* o = hnp + b * H;
      if (dtp[b] == T(0)) {
        std::copy(hb, hb + H, o);
      } else {
#pragma omp simd
        for (int64_t c = 0; c < H; ++c) o[c] = hb[c] + ab * (ub[c] - hb[c]);
      }
    }
    h = hn;
  }
}

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;

// The steps of one layer: (outputs (T, B, H), h, UU, error_mean, error_var, [avg_surprise,
// adaptive_tau], saved). `saved` (empty unless `save`): UU before every `every`-th step, then pred,
// e, dev, ep, A, Q, HZ, Lin, DT, ht, eV, Mix, gain, rn, xt, XB, xV, each (T, B, ·).
// `w`: C, Vᵀ, [W | V], −[W | V], [B | V], eta, MY, bY, ML, bL (the scripted loops' order).
Result euler_forward(const at::Tensor& h, const at::Tensor& UU, const at::Tensor& em, const at::Tensor& ev,
                     const at::Tensor& sc, const at::Tensor& xs, const at::Tensor& dts, const c10::optional<at::Tensor>& ms,
                     const c10::optional<at::Tensor>& xall, const at::Tensor& BWV, at::TensorList w,
                     at::ArrayRef<double> rates, bool fw, bool mix, bool ltc, bool save, int64_t every) {
  TORCH_CHECK(w.size() == 10, "euler_forward: expected 10 weights, got ", w.size());
  TORCH_CHECK(rates.size() == 7, "euler_forward: expected 7 rates, got ", rates.size());
  const at::Tensor &C = w[0], &Vt = w[1], &WV = w[2], &negWV = w[3], &BV = w[4], &eta = w[5], &MY = w[6],
                   &bY = w[7], &ML = w[8], &bL = w[9];
  TORCH_CHECK(xs.device().is_cpu(), "dreamode.native: CPU tensors only, got ", xs.device());
  TORCH_CHECK(every >= 1, "euler_forward: every must be >= 1, got ", every);
  const Rates k{rates[0], rates[1], rates[2], rates[3], rates[4], rates[5], rates[6]};
  const int64_t T_ = xs.size(0), B = xs.size(1), I = xs.size(2);
  const int64_t H = C.size(0), R = Vt.size(0);
  const bool masked = ms.has_value();
  auto o = h.options();
  at::Tensor out = at::empty({T_, B, H}, o);
  at::Tensor UUw = UU.clone(at::MemoryFormat::Contiguous);
  at::Tensor emw = em.clone(at::MemoryFormat::Contiguous);
  at::Tensor evw = ev.clone(at::MemoryFormat::Contiguous);
  at::Tensor scw = sc.clone(at::MemoryFormat::Contiguous);
  Saved sv;
  std::vector<at::Tensor> saved;
  if (save) {
    at::Tensor none = at::empty({0}, o);
    sv.UU = at::empty({(T_ + every - 1) / every, B, 2, R, H}, o);
    sv.pred = at::empty({T_, B, I}, o);
    sv.e = at::empty({T_, B, I}, o);
    sv.dev = at::empty({T_, B, I}, o);
    sv.ep = at::empty({T_, B, I}, o);
    sv.A = at::empty({T_, B, 1}, o);
    sv.Q = at::empty({T_, B, 4}, o);
    sv.HZ = at::empty({T_, B, 5}, o);
    sv.Lin = at::empty({T_, B, 8}, o);
    sv.DT = at::empty({T_, B, 8}, o);
    sv.ht = at::empty({T_, B, H}, o);
    sv.eV = at::empty({T_, B, R}, o);
    sv.Mix = mix ? at::empty({T_, B, 2, 2}, o) : none;
    sv.gain = fw ? at::empty({T_, B, H}, o) : none;
    sv.rn = fw ? at::empty({T_, B, 2}, o) : none;
    sv.xt = masked ? at::empty({T_, B, I}, o) : none;
    sv.XB = masked ? at::empty({T_, B, H}, o) : none;
    sv.xV = masked ? at::empty({T_, B, R}, o) : none;
  }
  at::Tensor msc = masked ? ms->contiguous() : at::Tensor();
  at::Tensor xa = !masked && xall.has_value() ? xall->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "euler_forward", [&] {
    forward_steps<scalar_t>(out, UUw, emw, evw, scw, h.contiguous(), xs.contiguous(), dts.contiguous(), msc, xa,
                            C.contiguous(), Vt.contiguous(), BWV.contiguous(), WV.contiguous(), negWV.contiguous(),
                            BV.contiguous(), eta.contiguous(), MY.contiguous(), bY.contiguous(), ML.contiguous(),
                            bL.contiguous(), k, fw, mix, ltc, save ? &sv : nullptr, every);
  });
  if (save) {
    saved = {sv.UU, sv.pred, sv.e,   sv.dev,  sv.ep, sv.A,  sv.Q,  sv.HZ, sv.Lin,
             sv.DT, sv.ht,   sv.eV,  sv.Mix,  sv.gain, sv.rn, sv.xt, sv.XB, sv.xV};
  }
  at::Tensor hT = T_ > 0 ? out[T_ - 1].clone() : h.clone();
  return {out, hT, UUw, emw, evw, scw, saved};
}

// -- one streaming step ----------------------------------------------------------------------------

// `a` and `b` as the two halves (along dim 1) of one contiguous tensor of `shape` and `strides`,
// if they are such views, with strides `view_strides` (the state this file returns); else stacked
at::Tensor pair(const at::Tensor& a, const at::Tensor& b, at::IntArrayRef shape, at::IntArrayRef strides,
                at::IntArrayRef view_strides, const std::vector<at::Tensor>& parts) {
  const int64_t half = strides[1];
  if (a.strides() == view_strides && b.strides() == view_strides && b.storage().is_alias_of(a.storage()) &&
      b.storage_offset() == a.storage_offset() + half) {
    at::Tensor base = a.as_strided(shape, strides, a.storage_offset());
    if (base.is_contiguous()) return base;
  }
  return at::stack(parts, 1).contiguous();
}

using State = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// One step of DREAMCell without a gradient, from and to the seven tensors of a DREAMState: h (B, H),
// U and U_target (B, H, R), error_mean and error_var (B, I), avg_surprise and adaptive_tau (B,).
// The returned U, U_target (and the two scalars) are views of one tensor, which the next call
// takes as it is.
State euler_cell(const at::Tensor& h, const at::Tensor& U, const at::Tensor& Ut, const at::Tensor& em,
                 const at::Tensor& ev, const at::Tensor& as, const at::Tensor& at_, const at::Tensor& x,
                 const at::Tensor& dt, const c10::optional<at::Tensor>& mask, const at::Tensor& BWV,
                 at::TensorList w, at::ArrayRef<double> rates, bool fw, bool mix, bool ltc) {
  const int64_t B = U.size(0), H = U.size(1), R = U.size(2), RH = R * H;
  at::Tensor UU = pair(U, Ut, {B, 2, R, H}, {2 * RH, RH, H, 1}, {2 * RH, 1, H}, {U.transpose(1, 2), Ut.transpose(1, 2)});
  at::Tensor sc = pair(as, at_, {B, 2}, {2, 1}, {2}, {as, at_});
  c10::optional<at::Tensor> ms;
  if (mask.has_value()) ms = mask->unsqueeze(0);
  auto r = euler_forward(h, UU, em, ev, sc, x.unsqueeze(0), dt.unsqueeze(0), ms, c10::nullopt, BWV, w, rates, fw,
                         mix, ltc, false, 1);
  const at::Tensor& UUn = std::get<2>(r);
  const at::Tensor& scn = std::get<5>(r);
  return {std::get<0>(r)[0], UUn.select(1, 0).transpose(1, 2), UUn.select(1, 1).transpose(1, 2), std::get<3>(r),
          std::get<4>(r), scn.select(1, 0), scn.select(1, 1)};
}

// -- the reverse loop ------------------------------------------------------------------------------

// per-step inputs of the reverse loop, each (T, B, ·), in the order of `steps`: what the forward
// saved (DT = [Δt/τ before the clamp, Δt·S, kF, kH, csg, 1 + κS, S, min(n, θ)], Q = [n, clamped
// log, avg_surprise, adaptive_tau], HZ = [S, g, homU, homUt, min(n, θ)], A, dev, ep, h before the
// step, h̃, Lin (only to differentiate Δt), 1/‖U‖ (fast weights), x V, x B, Mix, pred, eV, gain),
// m / max(1, Σm) (mask) and Δt
enum Step { DT, Q, HZ, A, DEV, EP, HS, HT, LIN, RN, XV, XB, MIX, PRED, EV, GAIN, MC, DT0, NSTEPS };

template <typename T>
void backward_steps(int64_t every, at::Tensor& gh_t, at::Tensor& gUU_t, at::Tensor& gem_t, at::Tensor& gev_t,
                    at::Tensor& gsc_t, const at::Tensor& g_out, const at::Tensor& kept,
                    const std::vector<at::Tensor>& st, const at::Tensor& eta_t, const at::Tensor& Ct,
                    const at::Tensor& WVt, const at::Tensor& V_t, const at::Tensor& ML_t, const at::Tensor& MY_t,
                    const at::Tensor& BVt, const at::Tensor& ms, const Rates& k, bool need_dt, bool mix, bool fw,
                    bool ltc, std::vector<at::Tensor>& g) {
  const int64_t B = gh_t.size(0), H = gh_t.size(1), I = gem_t.size(1);
  const int64_t R = gUU_t.size(2), RH = R * H;
  const bool masked = ms.defined();
  const T two_pi_e_over_I = static_cast<T>(2.0 * M_PI * M_E / static_cast<double>(I));
  const T* eta = eta_t.data_ptr<T>();
  const T* V = V_t.data_ptr<T>();  // (I, R)
  const T* ML = ML_t.data_ptr<T>();
  const T* MY = MY_t.data_ptr<T>();
  const int64_t Tg = g_out.defined() ? g_out.size(1) : 0;
  auto o = gh_t.options();
  at::Tensor GEWV = at::empty({B, H + R}, o);   // [g u | g eV]: the gradient of [e W | e V]
  at::Tensor GXBV = at::empty({B, H + R}, o);   // [g u (1 + κS) | g xV]: of [x̃ B | x̃ V] (masked)
  at::Tensor T1 = at::empty({B, I}, o), T2 = at::empty({B, I}, o), G2 = at::empty({B, H}, o);
  std::vector<T> tg(static_cast<size_t>(H)), ghU(static_cast<size_t>(R));
  std::vector<T> evd(static_cast<size_t>(I)), devr(static_cast<size_t>(I));
  const T eps = static_cast<T>(1e-6), theta = static_cast<T>(k.theta), N = static_cast<T>(k.target_norm);
  const T r_err = static_cast<T>(k.error), r_s = static_cast<T>(k.surprise), r_h = static_cast<T>(k.habituation);
  const T itau_lo = static_cast<T>(k.inv_tau_max), itau_hi = static_cast<T>(k.inv_tau_min);
  const T inv_I = static_cast<T>(1.0 / static_cast<double>(I));
  std::vector<T> gq(static_cast<size_t>(B)), gA(static_cast<size_t>(B));
  T* gh = gh_t.data_ptr<T>();
  T* gUU = gUU_t.data_ptr<T>();
  T* gem = gem_t.data_ptr<T>();
  T* gev = gev_t.data_ptr<T>();
  T* gsc = gsc_t.data_ptr<T>();
  auto at_ = [&](int s, int64_t i) { return row<T>(st[s], i); };
  const int64_t T_ = st[DT0].size(0), BUU = B * 2 * RH;
  // U and U_target before each step of a segment, recomputed from the kept ones
  at::Tensor scratch = at::empty({std::min(every, T_), B, 2, R, H}, o);
  T* sp = scratch.data_ptr<T>();
  for (int64_t lo = ((T_ - 1) / every) * every; lo >= 0; lo -= every) {
   const int64_t hi = std::min(lo + every, T_);
   std::copy(row<T>(kept, lo / every), row<T>(kept, lo / every) + BUU, sp);
   for (int64_t j = lo; j + 1 < hi; ++j) {
    fast_weight_step(sp + (j - lo) * BUU, sp + (j - lo + 1) * BUU, mix ? at_(MIX, j) : nullptr,
                     fw ? at_(EV, j) : nullptr, fw ? at_(GAIN, j) : nullptr, at_(DT0, j), B, R, H, mix, fw);
   }
   for (int64_t i = hi - 1; i >= lo; --i) {
    const int64_t n = i;  // the row of this step in the outputs
    const T* UUi = sp + (i - lo) * BUU;
    T* gPn = row<T>(g[0], n);
    T* gu = row<T>(g[1], n);
    T* gHZf = row<T>(g[2], n);
    T* gLin = row<T>(g[3], n);
    T* g_gain = row<T>(g[4], n);
    T* gE = row<T>(g[5], n);
    T* gxV = row<T>(g[6], n);
    T* geV = row<T>(g[7], n);
    T* gdt = row<T>(g[8], n);
    T* gxt = row<T>(g[9], n);
    const T *DTs = at_(DT, i), *Qs = at_(Q, i), *HZs = at_(HZ, i), *As = at_(A, i), *devs = at_(DEV, i),
            *ept = at_(EP, i), *hs = at_(HS, i), *hts = at_(HT, i), *xvs = at_(XV, i), *xbs = at_(XB, i),
            *dt0 = at_(DT0, i);
    const T* mixs = mix ? at_(MIX, i) : nullptr;
    const T* eVs = fw ? at_(EV, i) : nullptr;
    const T* gains = fw ? at_(GAIN, i) : nullptr;
    const T* rns = fw ? at_(RN, i) : nullptr;
    const T* Lins = need_dt ? at_(LIN, i) : nullptr;
    const T* mcs = masked ? at_(MC, i) : nullptr;
    T* gewv = GEWV.data_ptr<T>();
    T* gxbv = GXBV.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      // the local derivatives of this step and sample, from what the forward saved
      const T dt = dt0[b];
      const T* DTb = DTs + b * 8;
      const T* Qb = Qs + b * 4;
      const T* HZb = HZs + b * 5;
      const T n_ = Qb[0];
      const T dtlo = dt * itau_lo, dthi = dt * itau_hi;
      const T a_raw = DTb[0];
      const T ga_f = ltc ? ((a_raw >= dtlo && a_raw <= dthi) ? dt : T(0)) : dt;
      const T dtR0 = dt * r_s, dtR1 = dt * r_h;
      // D1: ∂(Δt·L, the sc targets' weights) per column; D2: σ', the homeostasis factor, ∂min(n, θ);
      // D3: ∂sqrt, ∂clamp(log A)
      const T d1[8] = {ga_f, dt, dt, dt, dt, T(1), dtR0, dtR1};
      const T hf = fw && HZb[2] > 0 ? N * rns[b * 2] * rns[b * 2] * rns[b * 2] : T(0);
      const T d2[5] = {HZb[0] - HZb[0] * HZb[0], HZb[1] - HZb[1] * HZb[1], hf, T(0), n_ <= theta ? T(1) : T(0)};
      const T Lr = std::log(As[b]);
      const T d3[4] = {n_ > 0 ? T(0.5) / n_ : T(0), (Lr >= 0 && Lr <= 4) ? T(1) / As[b] : T(0), T(1), T(1)};
      const T dtr = dt * r_err;
      const T omdtr = T(1) - dtr;
      const T omdtR[2] = {T(1) - dtR0, T(1) - dtR1};
      T* ghb = gh + b * H;
      if (g_out.defined()) axpy(ghb, T(1), g_out.data_ptr<T>() + (b * Tg + i) * H, H);
      const T* U = UUi + b * 2 * RH;
      const T* Ut = U + RH;
      T* gU = gUU + b * 2 * RH;
      T* gUt = gU + RH;
      const T* hb = hs + b * H;
      // fast weights and sleep: UU_n = Mix @ UU, plus gain ⊗ eV on U
      T gm[4] = {0, 0, 0, 0};
      T* ggb = fw ? g_gain + b * H : nullptr;
      if (fw) std::fill(ggb, ggb + H, T(0));
      for (int64_t r = 0; r < R; ++r) {
        T* g0 = gU + r * H;
        T* g1 = gUt + r * H;
        const T* u0 = U + r * H;
        const T* t0 = Ut + r * H;
        if (fw) {
          axpy(ggb, eVs[b * R + r], g0, H);
          geV[b * R + r] = dot(gains + b * H, g0, H);
        }
        if (mix) {
          const T* M = mixs + b * 4;
          T s00 = 0, s01 = 0, s10 = 0, s11 = 0;
#pragma omp simd reduction(+ : s00, s01, s10, s11)
          for (int64_t c = 0; c < H; ++c) {
            const T a0 = g0[c], a1 = g1[c];
            s00 += a0 * u0[c];
            s01 += a0 * t0[c];
            s10 += a1 * u0[c];
            s11 += a1 * t0[c];
            g0[c] = M[0] * a0 + M[2] * a1;
            g1[c] = M[1] * a0 + M[3] * a1;
          }
          gm[0] += s00;
          gm[1] += s01;
          gm[2] += s10;
          gm[3] += s11;
        }
      }
      T g_dtS = 0;
      if (fw) {
        for (int64_t c = 0; c < H; ++c) tg[c] = ggb[c] * eta[c];
        g_dtS = dot(tg.data(), hb, H);
      }
      // h_n = lerp(h, h̃, a)
      const T a = ltc ? std::min(std::max(a_raw, dtlo), dthi) : a_raw, dtS = DTb[1];
      const T* htb = hts + b * H;
      T* gub = gu + b * H;
      T ga = 0;
      for (int64_t c = 0; c < H; ++c) {
        const T g = ghb[c];
        const T g_ht = g * a;
        ga += g * (htb[c] - hb[c]);
        ghb[c] = fw ? (g - g_ht) + tg[c] * dtS : g - g_ht;
        gub[c] = g_ht * (T(1) - htb[c] * htb[c]);
      }
      // u = eW + (1 + κS)·xB + xV U
      const T* xvb = xvs + b * R;
      for (int64_t r = 0; r < R; ++r) {
        axpy(gU + r * H, xvb[r], gub, H);
        gxV[b * R + r] = dot(gub, U + r * H, H);
      }
      const T gc1 = dot(gub, xbs + b * H, H);
      // the per-sample scalars: L, then HZ = [S, g, homU, homUt, min(n, θ)], then Q = [n, Lc, as, at]
      T* gs = gsc + b * 2;
      const T v[8] = {ga, g_dtS, -gm[0] + gm[1], -gm[0], gm[2] - gm[3], gc1, gs[0], gs[1]};
      T* gemb = gem + b * I;
      T* gevb = gev + b * I;
      const T* devb = devs + b * I;
      const T* epb = ept + b * I;
      if (need_dt) {
        // Δt enters Δt·L (all but 1 + κS) and the statistics' lerps
        const T* Lb = Lins + b * 8;
        const T itau = ltc ? std::min(std::max(Lb[0], itau_lo), itau_hi) : Lb[0];
        const T lfac[8] = {itau, Lb[1], Lb[2], Lb[3], Lb[4], T(0), r_s * (HZb[0] - Qb[2]),
                           r_h * (std::min(n_, theta) - Qb[3])};
        T s = 0;
        for (int c = 0; c < 8; ++c) s += v[c] * lfac[c];
        for (int64_t j = 0; j < I; ++j) {
          evd[j] = (devb[j] * devb[j] - (epb[j] - eps)) * r_err;
          devr[j] = devb[j] * r_err;
        }
        gdt[b] = s + dot(gemb, devr.data(), I) + dot(gevb, evd.data(), I);
      }
      T* gl = gLin + b * 8;
      for (int c = 0; c < 8; ++c) gl[c] = v[c] * d1[c];
      T* gz = gHZf + b * 5;
      for (int j = 0; j < 5; ++j) {
        T s = 0;
        for (int c = 0; c < 8; ++c) s += gl[c] * ML[j * 8 + c];
        gz[j] = s * d2[j];
      }
      if (fw) {
        for (int64_t r = 0; r < R; ++r) axpy(gU + r * H, gz[2], U + r * H, H);
      }
      T gQ[4];
      for (int j = 0; j < 4; ++j) {
        T s = gz[0] * MY[j * 2] + gz[1] * MY[j * 2 + 1];
        if (j == 0) s += gz[4];
        gQ[j] = s * d3[j];
      }
      gs[0] = gQ[2] + gs[0] * omdtR[0];
      gs[1] = gQ[3] + gs[1] * omdtR[1];
      // running statistics: g dev = P1·g ev_n + gq·P2, g ev += −gq·P3 with P1 = 2 dev·Δt·β/Δt_ref,
      // P2 = 2 dev·w, P3 = dev²/ep·w and w the z-score's weight over ep (1/I, or m / max(1, Σm))
      const T w = dtr, om = omdtr;
      T* geb = gE + b * I;
      for (int64_t j = 0; j < I; ++j) {
        const T dev = devb[j], ep = epb[j];
        const T dev2 = dev + dev;
        const T iep = masked ? mcs[b * I + j] / ep : (T(1) / ep) * inv_I;
        const T ge0 = gemb[j] * w;
        const T gdev = (dev2 * dtr) * gevb[j] + gQ[0] * (dev2 * iep);
        gemb[j] = gemb[j] * om - gdev;
        gevb[j] = (gevb[j] * om - gQ[0] * ((dev * dev / ep) * iep)) + gQ[1] * two_pi_e_over_I;
        geb[j] = ge0 + gdev;
      }
      std::copy(gub, gub + H, gewv + b * (H + R));
      for (int64_t r = 0; r < R; ++r) gewv[b * (H + R) + H + r] = fw ? geV[b * R + r] : T(0);
      if (masked) {
        for (int64_t c = 0; c < H; ++c) gxbv[b * (H + R) + c] = gub[c] * DTb[5];  // (1 + κS)
        std::copy(gxV + b * R, gxV + b * R + R, gxbv + b * (H + R) + H);
      }
    }
    // the error, the imputed input and their projections
    at::mm_out(T1, GEWV, WVt);  // ∂/∂e through [W | V]
    const T* t1 = T1.data_ptr<T>();
    const T* pred = at_(PRED, i);
    if (masked) {
      at::mm_out(T2, GXBV, BVt);  // ∂/∂x̃ through [B | V]
      const T* t2 = T2.data_ptr<T>();
      const T* m = row<T>(ms, i);
      for (int64_t j = 0; j < B * I; ++j) {
        const T e = gE[j] + t1[j];
        gE[j] = e;
        gxt[j] = t2[j];
        gPn[j] = (e * m[j] - (T(1) - m[j]) * t2[j]) * (T(1) - pred[j] * pred[j]);
      }
    } else {
      for (int64_t j = 0; j < B * I; ++j) gPn[j] = (gE[j] + t1[j]) * (T(1) - pred[j] * pred[j]);
    }
    // P = h C + (h Uᵀ) Vᵀ; gPn is −∂/∂P
    at::Tensor gPn_t = g[0][n];
    at::mm_out(G2, gPn_t, Ct);
    const T* g2 = G2.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const T* gp = gPn + b * I;
      std::fill(ghU.begin(), ghU.end(), T(0));
      for (int64_t j = 0; j < I; ++j) axpy(ghU.data(), -gp[j], V + j * R, R);
      T* ghb = gh + b * H;
      const T* U = UUi + b * 2 * RH;
      T* gU = gUU + b * 2 * RH;
      const T* hb = hs + b * H;
      for (int64_t c = 0; c < H; ++c) ghb[c] -= g2[b * H + c];
      for (int64_t r = 0; r < R; ++r) {
        axpy(ghb, ghU[r], U + r * H, H);
        axpy(gU + r * H, ghU[r], hb, H);
      }
    }
   }
  }
}

using BackResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>>;

// The reverse recurrence over all steps, from the gradients of the final state. `kept`: U and
// U_target before every `every`-th step (the others are recomputed, segment by segment, as the
// forward computed them). Returns the gradients of the initial state and, per step in forward
// order, gPn, gu, gHZf, gLin, g_gain, gE, gxV, geV, gdt, gxt (those that do not apply are empty).
// `steps`: see Step; `mats`: eta, Cᵀ, [W | V]ᵀ, V, ML, MY, [B | V]ᵀ.
BackResult euler_backward(int64_t every, const at::Tensor& gh, const at::Tensor& gUU, const at::Tensor& gem,
                          const at::Tensor& gev, const at::Tensor& gsc, const c10::optional<at::Tensor>& g_out,
                          const at::Tensor& kept, at::TensorList steps, at::TensorList mats,
                          const c10::optional<at::Tensor>& ms, at::ArrayRef<double> rates, bool need_dt, bool mix,
                          bool fw, bool ltc) {
  TORCH_CHECK(steps.size() == NSTEPS, "euler_backward: expected ", static_cast<int>(NSTEPS), " per-step tensors");
  TORCH_CHECK(mats.size() == 7, "euler_backward: expected 7 matrices");
  TORCH_CHECK(rates.size() == 7, "euler_backward: expected 7 rates, got ", rates.size());
  const Rates k{rates[0], rates[1], rates[2], rates[3], rates[4], rates[5], rates[6]};
  const int64_t B = gh.size(0), H = gh.size(1), I = gem.size(1), R = gUU.size(2), n = steps[0].size(0);
  TORCH_CHECK(every >= 1 && kept.size(0) == (n + every - 1) / every, "euler_backward: expected the UU of every ",
              every, "-th step, got ", kept.size(0), " for ", n, " steps");
  const bool masked = ms.has_value();
  auto o = gh.options();
  at::Tensor none = at::empty({0}, o);
  at::Tensor ghw = gh.clone(at::MemoryFormat::Contiguous), gUUw = gUU.clone(at::MemoryFormat::Contiguous);
  at::Tensor gemw = gem.clone(at::MemoryFormat::Contiguous), gevw = gev.clone(at::MemoryFormat::Contiguous);
  at::Tensor gscw = gsc.clone(at::MemoryFormat::Contiguous);
  std::vector<at::Tensor> g = {
      at::empty({n, B, I}, o),  at::empty({n, B, H}, o),
      at::empty({n, B, 5}, o),  at::empty({n, B, 8}, o),
      fw ? at::empty({n, B, H}, o) : none,  at::empty({n, B, I}, o),
      at::empty({n, B, R}, o),  fw ? at::empty({n, B, R}, o) : none,
      need_dt ? at::empty({n, B, 1}, o) : none,  masked ? at::empty({n, B, I}, o) : none};
  std::vector<at::Tensor> st(steps.begin(), steps.end());
  for (auto& t : st) t = t.contiguous();
  at::Tensor kc = kept.contiguous();
  at::Tensor go = g_out.has_value() ? g_out->contiguous() : at::Tensor();
  at::Tensor msc = masked ? ms->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(gh.scalar_type(), "euler_backward", [&] {
    backward_steps<scalar_t>(every, ghw, gUUw, gemw, gevw, gscw, go, kc, st, mats[0].contiguous(), mats[1],
                             mats[2], mats[3].contiguous(), mats[4].contiguous(), mats[5].contiguous(), mats[6], msc,
                             k, need_dt, mix, fw, ltc, g);
  });
  return {ghw, gUUw, gemw, gevw, gscw, g};
}

}  // namespace

TORCH_LIBRARY(dreamode_native, m) {
  m.def(
      "euler_forward(Tensor h, Tensor UU, Tensor em, Tensor ev, Tensor sc, Tensor xs, Tensor dts, Tensor? ms, Tensor? xall, "
      "Tensor BWV, Tensor[] w, float[] rates, bool fw, bool mix, bool ltc, bool save, int every) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[])",
      &euler_forward);
  m.def(
      "euler_cell(Tensor h, Tensor U, Tensor Ut, Tensor em, Tensor ev, Tensor avg_surprise, Tensor adaptive_tau, "
      "Tensor x, Tensor dt, Tensor? mask, Tensor BWV, Tensor[] w, float[] rates, bool fw, bool mix, bool ltc) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      &euler_cell);
  m.def(
      "euler_backward(int every, Tensor gh, Tensor gUU, Tensor gem, Tensor gev, Tensor gsc, Tensor? g_out, "
      "Tensor kept, Tensor[] steps, Tensor[] mats, Tensor? ms, float[] rates, bool need_dt, bool mix, bool fw, "
      "bool ltc) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[])",
      &euler_backward);
}
