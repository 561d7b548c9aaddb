//! Fused CPU kernels with their own backward passes for the layers training spends its time
//! in: RMSNorm, RoPE (rotate-half), SwiGLU's `silu(gate) * up`, the causal softmax of
//! attention and the masked cross-entropy. Composed from candle's primitive ops each of these
//! is 5–10 tensor passes and as many allocations forward and again backward; fused they are one
//! pass each way, parallel over rows. Only f32 on the CPU: on other devices (or dtypes) the
//! model uses the composed ops, which these are tested against (values and gradients).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

static FUSED_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turn the fused kernels off (or on again) for this process: the CLI does for
/// `UNDERSTUDY_FUSED=0`, to measure what they save or to rule them out.
pub fn set_fused(enabled: bool) {
    FUSED_ENABLED.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the fused kernels apply to tensors on this device with this dtype.
pub fn fused(device: &Device, dtype: DType) -> bool {
    FUSED_ENABLED.load(std::sync::atomic::Ordering::Relaxed) && device.is_cpu() && dtype == DType::F32
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// Runs `f` on a tensor's f32 values (made contiguous first if they are not).
fn with_values<R>(tensor: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(f32_slice(cpu, layout, op)?)),
        _ => candle_core::bail!("{op}: the fused kernels run on the CPU only"),
    }
}

fn tensor(values: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

/// Rows handed to one rayon task at a time: enough work to be worth a task.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(xs, xl, self.name())?, f32_slice(ws, wl, self.name())?);
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * rows_per_task(d)).zip(x.par_chunks(d * rows_per_task(d))).for_each(|(out, x)| {
            for (out, x) in out.chunks_mut(d).zip(x.chunks(d)) {
                let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + self.eps).sqrt();
                for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
                    *o = v * r * w;
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let w_values = w.flatten_all()?.to_vec1::<f32>()?;
        let d = w_values.len();
        let (gx, gw) = with_values(x, self.name(), |x| {
            with_values(grad, self.name(), |g| {
                let mut gx = vec![0f32; x.len()];
                let chunk = d * rows_per_task(d);
                let gw = gx
                    .par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
                    .map(|(gx, (x, g))| {
                        let mut gw = vec![0f32; d];
                        for ((gx, x), g) in gx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                            let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + self.eps).sqrt();
                            // dot = Σ g·w·x̂ / d
                            let mut dot = 0f32;
                            for i in 0..d {
                                let xhat = x[i] * r;
                                gw[i] += g[i] * xhat;
                                dot += g[i] * w_values[i] * xhat;
                            }
                            dot /= d as f32;
                            for i in 0..d {
                                gx[i] = r * (g[i] * w_values[i] - x[i] * r * dot);
                            }
                        }
                        gw
                    })
                    // Partial sums in chunk order, added up in that order: rayon's `reduce`
                    // would combine them in an order that follows thread timing, and float
                    // addition is not associative, so a busy machine would change the weights.
                    .collect::<Vec<_>>()
                    .into_iter()
                    .fold(vec![0f32; d], |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    });
                (gx, gw)
            })
        })??;
        Ok((Some(tensor(gx, x.shape())?), Some(tensor(gw, w.shape())?)))
    }
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

struct SiluMul;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = (f32_slice(gs, gl, self.name())?, f32_slice(us, ul, self.name())?);
        if gl.shape() != ul.shape() {
            candle_core::bail!("fused-silu-mul: shapes {:?} and {:?} differ", gl.shape(), ul.shape());
        }
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(16_384).zip(gate.par_chunks(16_384).zip(up.par_chunks(16_384))).for_each(|(o, (g, u))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(*g) * u;
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g_gate, g_up) = with_values(gate, self.name(), |gate| {
            with_values(up, self.name(), |up| {
                with_values(grad, self.name(), |grad| {
                    let mut g_gate = vec![0f32; gate.len()];
                    let mut g_up = vec![0f32; gate.len()];
                    g_gate
                        .par_chunks_mut(16_384)
                        .zip(g_up.par_chunks_mut(16_384))
                        .zip(gate.par_chunks(16_384).zip(up.par_chunks(16_384)).zip(grad.par_chunks(16_384)))
                        .for_each(|((gg, gu), ((a, u), g))| {
                            for i in 0..a.len() {
                                let s = sigmoid(a[i]);
                                gu[i] = g[i] * a[i] * s;
                                gg[i] = g[i] * u[i] * s * (1.0 + a[i] * (1.0 - s));
                            }
                        });
                    (g_gate, g_up)
                })
            })
        })???;
        Ok((Some(tensor(g_gate, gate.shape())?), Some(tensor(g_up, up.shape())?)))
    }
}

/// `silu(gate) * up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------
// RoPE, rotate-half layout (Hugging Face Llama)

struct Rope {
    /// (t, d/2) each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    t: usize,
}

impl Rope {
    /// Rotates every (b, h) slab of (t, d) by the position angles; `sign` -1 rotates back.
    fn rotate(&self, x: &[f32], d: usize, sign: f32) -> Vec<f32> {
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(self.t * d).zip(x.par_chunks(self.t * d)).for_each(|(out, x)| {
            for p in 0..self.t {
                let (cos, sin) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                let (x, out) = (&x[p * d..(p + 1) * d], &mut out[p * d..(p + 1) * d]);
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    let s = sign * sin[i];
                    out[i] = a * cos[i] - b * s;
                    out[i + half] = b * cos[i] + a * s;
                }
            }
        });
        out
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let (_, _, t, d) = layout.shape().dims4()?;
        if t != self.t || self.cos.len() != t * d / 2 {
            candle_core::bail!("fused-rope: {t} positions × {d} against {} angles", self.cos.len());
        }
        Ok((CpuStorage::F32(self.rotate(x, d, 1.0)), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = x.dim(3)?;
        let back = with_values(grad, self.name(), |g| self.rotate(g, d, -1.0))?;
        Ok(Some(tensor(back, x.shape())?))
    }
}

/// RoPE on `x` (b, h, t, d) with `cos`/`sin` (t, d/2), the rotate-half layout of `rope_slow`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let t = cos.dim(0)?;
    let op = Rope { cos: cos.flatten_all()?.to_vec1()?, sin: sin.flatten_all()?.to_vec1()?, t };
    x.contiguous()?.apply_op1(op)
}

// ---------------------------------------------------------------------------------------------
// Causal softmax

struct CausalSoftmax {
    /// New positions (rows repeat every `t`: query heads sharing a KV head are stacked).
    t: usize,
    /// Cached positions before them.
    offset: usize,
    scale: f32,
}

impl CausalSoftmax {
    /// Keys row `r` may see.
    fn visible(&self, row: usize) -> usize {
        self.offset + row % self.t + 1
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = f32_slice(storage, layout, self.name())?;
        let dims = layout.shape().dims();
        let total = dims[dims.len() - 1];
        let rows_here = dims[dims.len() - 2];
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(total).zip(scores.par_chunks(total)).enumerate().for_each(|(row, (out, s))| {
            let visible = self.visible(row % rows_here).min(total);
            let max = s[..visible].iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) * self.scale;
            let mut sum = 0f32;
            for j in 0..visible {
                let e = (s[j] * self.scale - max).exp();
                out[j] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            out[..visible].iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, scores: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let total = scores.dim(scores.rank() - 1)?;
        let back = with_values(res, self.name(), |y| {
            with_values(grad, self.name(), |g| {
                let mut out = vec![0f32; y.len()];
                out.par_chunks_mut(total).zip(y.par_chunks(total).zip(g.par_chunks(total))).for_each(
                    |(out, (y, g))| {
                        let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                        for j in 0..total {
                            out[j] = self.scale * y[j] * (g[j] - dot);
                        }
                    },
                );
                out
            })
        })??;
        Ok(Some(tensor(back, scores.shape())?))
    }
}

/// `softmax(scores · scale)` over the last dimension with the causal mask: row `r` sees keys
/// `0 ..= offset + r % t`. `scores`: (..., rows, offset + t).
pub fn causal_softmax(scores: &Tensor, t: usize, offset: usize, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { t, offset, scale: scale as f32 })
}

// ---------------------------------------------------------------------------------------------
// Products with a frozen weight

/// `x · Wᵀ` where W is frozen: candle's matmul backward always computes the gradient of both
/// sides, so a frozen base weight (LoRA) or a frozen output head costs a wasted GEMM per
/// projection every step. The product is computed untracked and this op carries only `x`'s
/// gradient, `grad · W`.
struct FrozenProduct {
    /// The product, computed untracked.
    product: Tensor,
    weight: Tensor,
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(&self, _storage: &CpuStorage, _layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let values = with_values(&self.product, self.name(), <[f32]>::to_vec)?;
        Ok((CpuStorage::F32(values), self.product.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x · Wᵀ` for 2-D `x` and a weight that gets no gradient.
pub fn frozen_product(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let product = x.detach().matmul(&weight.t()?)?;
    x.apply_op1(FrozenProduct { product, weight: weight.clone() })
}

// ---------------------------------------------------------------------------------------------
// Masked cross-entropy

struct CrossEntropy {
    targets: Vec<u32>,
    mask: Vec<f32>,
}

impl CrossEntropy {
    fn total(&self) -> f32 {
        self.mask.iter().sum::<f32>().max(1.0)
    }
}

/// log Σ exp over a row.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = f32_slice(storage, layout, self.name())?;
        let (n, vocab) = layout.shape().dims2()?;
        if n != self.targets.len() || n != self.mask.len() {
            candle_core::bail!("fused-cross-entropy: {n} rows against {} targets", self.targets.len());
        }
        if let Some(bad) = self.targets.iter().find(|t| **t as usize >= vocab) {
            candle_core::bail!("fused-cross-entropy: target {bad} is outside the vocabulary ({vocab})");
        }
        // Row losses computed in parallel, summed in row order (deterministic, see RmsNorm).
        let sum: f64 = logits
            .par_chunks(vocab)
            .enumerate()
            .map(|(i, row)| {
                if self.mask[i] == 0.0 {
                    0.0
                } else {
                    ((log_sum_exp(row) - row[self.targets[i] as usize]) * self.mask[i]) as f64
                }
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum();
        Ok((CpuStorage::F32(vec![(sum / self.total() as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / self.total();
        let vocab = logits.dim(1)?;
        let back = with_values(logits, self.name(), |logits| {
            let mut out = vec![0f32; logits.len()];
            out.par_chunks_mut(vocab).zip(logits.par_chunks(vocab)).enumerate().for_each(|(i, (out, row))| {
                let weight = g * self.mask[i];
                if weight == 0.0 {
                    return;
                }
                let lse = log_sum_exp(row);
                for (o, v) in out.iter_mut().zip(row) {
                    *o = weight * (v - lse).exp();
                }
                out[self.targets[i] as usize] -= weight;
            });
            out
        })?;
        Ok(Some(tensor(back, logits.shape())?))
    }
}

/// Mean negative log-likelihood of `targets` over the rows where `mask` is non-zero (weighted
/// by it). `logits`: (n, vocab).
pub fn masked_cross_entropy(logits: &Tensor, targets: &[u32], mask: &[f32]) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(CrossEntropy { targets: targets.to_vec(), mask: mask.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<_>>(), shape, &Device::Cpu)
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The fused op and the composed reference agree on the value and on every input's gradient
    /// under the same random upstream gradient.
    fn check(inputs: &[Tensor], fused: impl Fn(&[Tensor]) -> Tensor, reference: impl Fn(&[Tensor]) -> Tensor) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&tensors), reference(&tensors));
        assert!(max_diff(&a, &b) < 1e-4, "values differ by {}", max_diff(&a, &b));
        let upstream = random(a.dims(), 99);
        let (ga, gb) = (
            (&a * &upstream).unwrap().sum_all().unwrap().backward().unwrap(),
            (&b * &upstream).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for (index, var) in vars.iter().enumerate() {
            let (x, y) = (ga.get(var).expect("fused gradient"), gb.get(var).expect("reference gradient"));
            assert!(max_diff(x, y) < 1e-3, "gradient of input {index} differs by {}", max_diff(x, y));
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_formula() {
        check(
            &[random(&[3, 5, 16], 1), random(&[16], 2)],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| {
                let ms = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                t[0].broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&t[1]).unwrap()
            },
        );
    }

    /// The weight gradient of RMSNorm is a sum over many rows split into rayon tasks: it must
    /// come out bit-identical whatever the thread count (a deterministic training run depends
    /// on it), as must the fused cross-entropy's sum over rows.
    #[test]
    fn reductions_do_not_depend_on_the_thread_count() {
        let (x, w, upstream) = (random(&[4096, 64], 7), random(&[64], 8), random(&[4096, 64], 9));
        let logits = random(&[2048, 96], 10);
        let targets: Vec<u32> = (0..2048).map(|i| (i * 7 % 96) as u32).collect();
        let mask: Vec<f32> = (0..2048).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let w = Var::from_tensor(&w).unwrap();
                let y = rms_norm(&x, w.as_tensor(), 1e-5).unwrap();
                let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                let gw = grads.get(&w).unwrap().to_vec1::<f32>().unwrap();
                let loss = masked_cross_entropy(&logits, &targets, &mask).unwrap().to_scalar::<f32>().unwrap();
                (gw.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), loss.to_bits())
            })
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            for _ in 0..3 {
                assert!(run(threads) == one, "{threads} threads changed a reduction");
            }
        }
    }

    #[test]
    fn silu_mul_matches_the_composed_formula() {
        check(
            &[random(&[4, 7, 12], 3), random(&[4, 7, 12], 4)],
            |t| silu_mul(&t[0], &t[1]).unwrap(),
            |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        );
    }

    #[test]
    fn rope_matches_rope_slow() {
        let (cos, sin) = (random(&[6, 4], 5).cos().unwrap(), random(&[6, 4], 5).sin().unwrap());
        check(
            &[random(&[2, 3, 6, 8], 6)],
            |t| rope(&t[0], &cos, &sin).unwrap(),
            |t| candle_nn::rotary_emb::rope_slow(&t[0], &cos, &sin).unwrap(),
        );
    }

    #[test]
    fn causal_softmax_matches_mask_and_softmax() {
        // 2 query groups × 3 new positions after 2 cached ones: (1, 2, 6, 5).
        let (t, offset, scale) = (3usize, 2usize, 0.5f64);
        let mask: Vec<f32> = (0..2 * t)
            .flat_map(|r| (0..offset + t).map(move |j| if j > offset + r % t { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (2 * t, offset + t), &Device::Cpu).unwrap();
        check(
            &[random(&[1, 2, 2 * t, offset + t], 7)],
            |x| causal_softmax(&x[0], t, offset, scale).unwrap(),
            |x| candle_nn::ops::softmax(&(&x[0] * scale).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap(),
        );
    }

    #[test]
    fn a_frozen_product_gives_the_input_gradient_of_a_matmul() {
        let weight = random(&[6, 4], 10);
        check(
            &[random(&[5, 4], 11)],
            |x| frozen_product(&x[0], &weight).unwrap(),
            |x| x[0].matmul(&weight.t().unwrap()).unwrap(),
        );
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_gather() {
        let targets = vec![3u32, 0, 9, 4, 4];
        let mask = vec![1f32, 0.0, 1.0, 1.0, 0.0];
        let (t, m) = (
            Tensor::new(targets.as_slice(), &Device::Cpu).unwrap(),
            Tensor::new(mask.as_slice(), &Device::Cpu).unwrap(),
        );
        check(
            &[random(&[5, 10], 8)],
            |x| masked_cross_entropy(&x[0], &targets, &mask).unwrap(),
            |x| {
                let log_probs = candle_nn::ops::log_softmax(&x[0], D::Minus1).unwrap();
                let picked = log_probs.gather(&t.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap();
                (picked * &m).unwrap().sum_all().unwrap().neg().unwrap().broadcast_div(&m.sum_all().unwrap()).unwrap()
            },
        );
    }
}
