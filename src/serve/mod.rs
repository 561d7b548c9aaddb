//! The serving engine: the catalog of servable models and the loaded ones (`registry`), the
//! decoding workers behind a bounded queue (`engine`), and the reply parser that turns model
//! text into content and tool calls the same way streamed or whole (`reply`). The OpenAI wire
//! format lives in `web::openai`; nothing here knows about HTTP.

pub mod engine;
pub mod registry;
pub mod reply;
