//! Fused CPU kernels with backward passes for the hot spots of training: softmax over the last
//! dimension (candle's fused `softmax_last_dim` has no backward and `ops::softmax` is five
//! passes). Other devices fall back to the composite differentiable op.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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
