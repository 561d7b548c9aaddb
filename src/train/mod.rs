//! Training: parameter creation (`params`), the optimizer and schedule (`optimizer`), and the
//! trainers — SFT (`sft`), and from a trained model GRPO (`grpo`), PPO (`ppo`) and DPO (`dpo`) —
//! and checkpoint selection by behaviour (`select`). candle is used only here and in `model`.

pub mod bench;
pub mod dpo;
pub mod grpo;
pub mod optimizer;
pub mod params;
pub mod ppo;
pub mod select;
pub mod sft;
