//! Serving metrics in Prometheus text format at `/metrics`: requests by route and status,
//! prompt and completion tokens, request latency and time to first token (histograms), and the
//! engine's queue.

use std::collections::BTreeMap;
use std::sync::Mutex;

const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        for (bucket, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if value <= *bucket {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (bucket, count) in BUCKETS.iter().zip(self.counts.iter()) {
            out.push_str(&format!("{name}_bucket{{le=\"{bucket}\"}} {count}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n",
            self.count, self.sum, self.count
        ));
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    latency: Histogram,
    first_token: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.requests.entry((route.to_string(), status)).or_default() += 1;
        inner.latency.observe(seconds);
    }

    pub fn tokens(&self, prompt: usize, completion: usize, first_token_seconds: Option<f64>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prompt_tokens += prompt as u64;
        inner.completion_tokens += completion as u64;
        if let Some(seconds) = first_token_seconds {
            inner.first_token.observe(seconds);
        }
    }

    /// The exposition text; `queued`, `active` and `capacity` come from the engine.
    pub fn render(&self, queued: usize, active: usize, capacity: usize, loaded: usize) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from("# HELP understudy_requests_total OpenAI-compatible requests by route and status.\n# TYPE understudy_requests_total counter\n");
        for ((route, status), count) in &inner.requests {
            out.push_str(&format!("understudy_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}\n"));
        }
        out.push_str(&format!(
            "# HELP understudy_prompt_tokens_total Prompt tokens processed.\n# TYPE understudy_prompt_tokens_total counter\nunderstudy_prompt_tokens_total {}\n",
            inner.prompt_tokens
        ));
        out.push_str(&format!(
            "# HELP understudy_completion_tokens_total Tokens generated.\n# TYPE understudy_completion_tokens_total counter\nunderstudy_completion_tokens_total {}\n",
            inner.completion_tokens
        ));
        inner.latency.render("understudy_request_seconds", "Request latency (whole response).", &mut out);
        inner.first_token.render(
            "understudy_time_to_first_token_seconds",
            "Time to the first generated token of streamed requests.",
            &mut out,
        );
        out.push_str(&format!("# HELP understudy_queue_waiting Requests waiting for a decoding worker.\n# TYPE understudy_queue_waiting gauge\nunderstudy_queue_waiting {queued}\n"));
        out.push_str(&format!("# HELP understudy_queue_active Requests being decoded.\n# TYPE understudy_queue_active gauge\nunderstudy_queue_active {active}\n"));
        out.push_str(&format!("# HELP understudy_queue_capacity Waiting requests accepted before 429.\n# TYPE understudy_queue_capacity gauge\nunderstudy_queue_capacity {capacity}\n"));
        out.push_str(&format!("# HELP understudy_models_loaded Model versions in memory.\n# TYPE understudy_models_loaded gauge\nunderstudy_models_loaded {loaded}\n"));
        out
    }
}
