//! Bootstrap: executable synthetic traces. `templates` defines workflow templates as data and
//! validates them; `generator` turns a template into a true trace by running its tools in a
//! sandbox workspace. The `bootstrap` job (jobs::bootstrap) drives both and stores the traces.

pub mod generator;
pub mod templates;
