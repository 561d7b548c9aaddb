//! Models: tokenizers and chat templates today (the LLaMA architecture, LoRA, loading and
//! sampling join here with training). `source` resolves what a `--model` argument names.

pub mod chat_template;
pub mod generate;
pub mod llama;
pub mod source;
pub mod tokenizer;
pub mod weights;
