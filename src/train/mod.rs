//! Training: parameter creation (`params`), the optimizer and schedule (`optimizer`), and the
//! trainers — SFT today (`sft`); RL phases join here. candle is used only here and in `model`.

pub mod bench;
pub mod optimizer;
pub mod params;
pub mod sft;
