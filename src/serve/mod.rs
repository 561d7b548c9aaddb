//! The serving engine: the catalog of servable models and the loaded ones (`registry`), the
//! decoding workers behind a bounded queue (`engine`) and the mistral.rs runtime exports decode
//! on (`mistral`), and what becomes of a served exchange in the store (`record`: a redacted
//! `served` trace, a Playground preference pair or rating). Replies are parsed by `model::reply`, the
//! same parser `generate` and export parity use. The OpenAI wire format lives in `web::openai`;
//! nothing here knows about HTTP.

pub mod decode;
pub mod mistral;
pub mod record;
pub mod registry;
