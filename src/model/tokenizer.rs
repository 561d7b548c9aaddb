//! Tokenizers (the `tokenizers` crate): load a `tokenizer.json`, rebuild a byte-level BPE
//! tokenizer from GGUF metadata (tokens, merges, token types, special ids, pre-tokenizer type),
//! and train a byte-level BPE for the `tiny` preset with the Qwen2 pre-tokenizer, so that
//! llama.cpp, Ollama, mistral.rs and candle all reproduce it from GGUF as `pre = "qwen2"`.

use std::collections::HashSet;
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, Vocab, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The Qwen2 split regex (reference A.6): the one every consumer reproduces from `pre = "qwen2"`.
pub const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read the tokenizer {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("GGUF tokenizer metadata: {0}")]
    Gguf(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

fn tk(error: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(error.to_string())
}

pub fn load_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_file(path)
        .map_err(|e| TokenizerError::Load { path: path.display().to_string(), reason: e.to_string() })
}

fn split_then_byte_level(regex: &str, byte_level: ByteLevel) -> Result<PreTokenizerWrapper, TokenizerError> {
    let split =
        Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false).map_err(tk)?;
    Ok(Sequence::new(vec![split.into(), byte_level.into()]).into())
}

/// Apply the pipeline a GGUF `tokenizer.ggml.pre` name stands for.
fn apply_pre(tokenizer: &mut Tokenizer, pre: &str) -> Result<(), TokenizerError> {
    match pre {
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC));
            tokenizer
                .with_pre_tokenizer(Some(split_then_byte_level(QWEN2_REGEX, ByteLevel::new(false, false, false))?));
        }
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => {
            tokenizer
                .with_pre_tokenizer(Some(split_then_byte_level(LLAMA3_REGEX, ByteLevel::new(false, true, false))?));
        }
        // SmolLM / StarCoder: single digits, then GPT-2's byte-level regex.
        "smollm" | "starcoder" | "refact" => {
            let digits: PreTokenizerWrapper = Digits::new(true).into();
            let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![digits, byte_level])));
        }
        _ => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    tokenizer.with_post_processor(Some(ByteLevelProcessor::new(false, false, false)));
    Ok(())
}

fn metadata_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content.metadata.get(key).and_then(|v| v.to_string().ok()).cloned()
}

fn metadata_u32(content: &gguf_file::Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok().or_else(|| v.to_i32().ok().map(|x| x as u32)))
}

/// What a GGUF file says about its tokenizer and chat template.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pre: String,
}

pub fn read_gguf(path: &Path) -> Result<gguf_file::Content, TokenizerError> {
    super::weights::read_gguf(path)
        .map(|(_, content)| content)
        .map_err(|e| TokenizerError::Load { path: path.display().to_string(), reason: format!("{e:#}") })
}

/// Rebuild a byte-level BPE tokenizer from GGUF metadata.
pub fn from_gguf(content: &gguf_file::Content) -> Result<GgufTokenizer, TokenizerError> {
    let model = metadata_string(content, "tokenizer.ggml.model")
        .ok_or_else(|| TokenizerError::Gguf("tokenizer.ggml.model is missing".into()))?;
    if model != "gpt2" {
        return Err(TokenizerError::Gguf(format!(
            "tokenizer.ggml.model {model:?} is not supported (only gpt2 byte-level BPE)"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>, TokenizerError> {
        let value = content.metadata.get(key).ok_or_else(|| TokenizerError::Gguf(format!("{key} is missing")))?;
        let items = value.to_vec().map_err(|_| TokenizerError::Gguf(format!("{key} is not an array")))?;
        items
            .iter()
            .map(|v| v.to_string().cloned().map_err(|_| TokenizerError::Gguf(format!("{key} holds a non-string"))))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Gguf(format!("bad merge {m:?}")))
        })
        .collect::<Result<_, _>>()?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges);
    if let Some(flag) = content.metadata.get("tokenizer.ggml.ignore_merges").and_then(|v| v.to_bool().ok()) {
        builder = builder.ignore_merges(flag);
    }
    let bpe = builder.build().map_err(tk)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = metadata_string(content, "tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
    apply_pre(&mut tokenizer, &pre)?;

    // CONTROL (3) and USER_DEFINED (4) tokens are matched whole, before the BPE.
    let mut specials = Vec::new();
    if let Some(types) = content.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        for (id, kind) in types.iter().enumerate() {
            let kind = kind.to_i32().ok().or_else(|| kind.to_u32().ok().map(|k| k as i32)).unwrap_or(1);
            if kind == 3 || kind == 4 {
                if let Some(token) = tokens.get(id) {
                    specials.push(AddedToken::from(token.clone(), kind == 3));
                }
            }
        }
    }
    tokenizer.add_special_tokens(&specials);
    let token = |key: &str| metadata_u32(content, key).and_then(|id| tokens.get(id as usize).cloned());
    Ok(GgufTokenizer {
        tokenizer,
        chat_template: metadata_string(content, "tokenizer.chat_template"),
        bos_token: token("tokenizer.ggml.bos_token_id"),
        eos_token: token("tokenizer.ggml.eos_token_id"),
        pre,
    })
}

/// Train a byte-level BPE on `texts` with the Qwen2 pipeline; `special_tokens` become single
/// tokens with the first ids. Every one of the 256 byte symbols is in the vocabulary.
pub fn train_bpe<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
    special_tokens: &[String],
) -> Result<Tokenizer, TokenizerError> {
    let mut tokenizer = Tokenizer::new(BPE::default());
    apply_pre(&mut tokenizer, "qwen2")?;
    let specials: Vec<AddedToken> = special_tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect();
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(alphabet)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    // The special tokens must not be learned from: split them out of the corpus first.
    tokenizer.add_special_tokens(&specials);
    tokenizer.train(&mut trainer, texts).map_err(tk)?;
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Token ids with their byte offsets in `text`; special tokens in the text are kept whole.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>), TokenizerError> {
    let encoding = tokenizer.encode(text, false).map_err(tk)?;
    Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_keeps_specials_whole_and_round_trips() {
        let corpus = [
            "<|im_start|>user\nWhere is the auth check?<|im_end|>",
            "<|im_start|>assistant\nIn src/auth/tokens.py, line 12.<|im_end|>",
        ];
        let texts: Vec<&str> = corpus.iter().copied().cycle().take(200).collect();
        let specials = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string(), "<|im_end|>".to_string()];
        let tokenizer = train_bpe(texts.into_iter(), 400, &specials).unwrap();
        assert_eq!(tokenizer.token_to_id("<|endoftext|>"), Some(0));
        assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(1));
        let text = "<|im_start|>user\nNew words: café 2026 ünïcode<|im_end|>";
        let (ids, offsets) = encode(&tokenizer, text).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(offsets[0], (0, "<|im_start|>".len()));
        let decoded = tokenizer.decode(&ids, false).unwrap();
        assert_eq!(decoded, text);
        assert!(tokenizer.get_vocab_size(true) >= 256 + 3);
    }
}
