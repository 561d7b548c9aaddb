//! Fused CPU kernels with backward passes for the hot spots of training: softmax over the last
//! dimension (candle's fused `softmax_last_dim` has no backward and `ops::softmax` is five
//! passes) and RMSNorm (candle's fused one has no backward either). Other devices fall back to
//! the composite differentiable ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "understudy-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("softmax: input must be contiguous"))?;
        let data = &storage.as_slice::<f32>()?[start..end];
        let width = *layout.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(width.max(1)).zip(data.par_chunks(width.max(1))).for_each(|(row_out, row)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, x) in row_out.iter_mut().zip(row) {
                *o = (x - max).exp();
                sum += *o;
            }
            let inverse = 1.0 / sum;
            row_out.iter_mut().for_each(|o| *o *= inverse);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, result: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d softmax: y * (g - sum(g * y))
        let weighted = (grad * result)?;
        let total = weighted.sum_keepdim(D::Minus1)?;
        Ok(Some((weighted - result.broadcast_mul(&total)?)?))
    }
}

/// Softmax over the last dimension, differentiable; fused on CPU for contiguous f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "understudy-rms-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout, w: &CpuStorage, w_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x_start, x_end) = x_layout.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("rms_norm: x must be contiguous"))?;
        let (w_start, w_end) = w_layout.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("rms_norm: weight must be contiguous"))?;
        let x = &x.as_slice::<f32>()?[x_start..x_end];
        let w = &w.as_slice::<f32>()?[w_start..w_end];
        let width = w.len().max(1);
        let eps = self.eps as f32;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(width).zip(x.par_chunks(width)).for_each(|(row_out, row)| {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let scale = 1.0 / (mean_square + eps).sqrt();
            for ((o, v), weight) in row_out.iter_mut().zip(row).zip(w) {
                *o = v * scale * weight;
            }
        });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _result: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // y = w ⊙ x r, r = (mean(x²) + eps)^(-1/2):
        // dx = r (g ⊙ w) − x r³ mean(g ⊙ w ⊙ x);  dw = Σ_rows g ⊙ x r
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let gw = grad.broadcast_mul(w)?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
        let normalized = x.broadcast_mul(&r)?;
        let width = w.dim(0)?;
        let dw = (grad * normalized)?.reshape(((), width))?.sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dimension, differentiable in `x` and `weight`; fused on CPU for f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps })
    } else {
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(mean_square + eps)?.sqrt()?)?.broadcast_mul(weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_matches_the_composite_formula_and_its_gradients() {
        let device = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec((0..24).map(|i| ((i * 5) % 7) as f32 * 0.4 - 1.1).collect::<Vec<f32>>(), (2, 3, 4), &device).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::from_vec(vec![0.5f32, 1.0, 1.5, -0.7], 4, &device).unwrap()).unwrap();
        let upstream = Tensor::from_vec((0..24).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<f32>>(), (2, 3, 4), &device).unwrap();
        let composite = |x: &Tensor, w: &Tensor| {
            let mean_square = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            x.broadcast_div(&(mean_square + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(w).unwrap()
        };
        let ours = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let reference = composite(x.as_tensor(), w.as_tensor());
        let max_diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
        let g1 = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&x, &w] {
            let diff = max_diff(g1.get(var.as_tensor()).unwrap(), g2.get(var.as_tensor()).unwrap());
            assert!(diff < 1e-4, "{diff}");
        }
    }

    #[test]
    fn matches_the_composite_softmax_and_its_gradient() {
        let device = Device::Cpu;
        let values: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(values, (2, 3, 4), &device).unwrap()).unwrap();
        let weights = Tensor::from_vec((0..24).map(|i| i as f32 * 0.1).collect::<Vec<f32>>(), (2, 3, 4), &device).unwrap();
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let diff = (&ours - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        let g1 = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
