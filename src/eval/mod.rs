//! Evaluation: suites of cases (`suite`), executed agentic episodes in the sandbox (`episode`)
//! and the preference pairs mined from them (`mined`),
//! the models that play them (`policy`: a stored model on our decoder, or any OpenAI-compatible
//! endpoint), and the metrics with Wilson intervals (`metrics`). The `eval` job (jobs::eval)
//! runs a suite case by case, stores every episode and score, and resumes after the last
//! stored case. Greedy decoding and seeded workspaces: the same model and suite give the same
//! numbers every time.

pub mod episode;
pub mod metrics;
pub mod mined;
pub mod policy;
pub mod promotion;
pub mod replay;
pub mod reward;
pub mod suite;

use episode::Policy;
use metrics::CaseScore;
use suite::EvalCase;

/// Play one case and score it.
pub fn evaluate_case(policy: &mut dyn Policy, case: &EvalCase, max_turns: usize) -> (episode::Episode, CaseScore) {
    let (episode, mut workspace, outputs) = episode::run(policy, case, max_turns);
    let score = metrics::score(case, &episode, &mut workspace, &outputs);
    (episode, score)
}
