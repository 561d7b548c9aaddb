//! Training: parameter creation (`params`), the optimizer and schedule (`optimizer`), and the
//! trainers — SFT today (`sft`); RL phases join here — and checkpoint selection by behaviour
//! (`select`). candle is used only here and in `model`.

pub mod bench;
pub mod dpo;
pub mod grpo;
pub mod optimizer;
pub mod params;
pub mod select;
pub mod sft;
