//! Models: tokenizers, chat templates and the reply parser, the LLaMA architecture with LoRA,
//! weight loading, sampling and schema-constrained token choice. `source` resolves what a `--model` argument names.

pub mod chat_template;
pub mod constrain;
pub mod generate;
pub mod import;
pub mod llama;
pub mod ops;
pub mod reply;
pub mod source;
pub mod tokenizer;
pub mod weights;
