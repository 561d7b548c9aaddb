//! The navigation bar every page shows: only pages that work are listed.

/// The navigation bar: only pages that work are listed.
pub struct Nav {
    pub items: Vec<NavItem>,
    pub version: &'static str,
}

pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub active: bool,
}

const NAV: [(&str, &str); 12] = [
    ("/", "Dashboard"),
    ("/traces", "Traces"),
    ("/bootstrap", "Bootstrap"),
    ("/datasets", "Datasets"),
    ("/training", "Training"),
    ("/models", "Models"),
    ("/playground", "Playground"),
    ("/capture", "Capture"),
    ("/orchestrator", "Orchestrator"),
    ("/import", "Import"),
    ("/jobs", "Jobs"),
    ("/docs", "API"),
];

impl Nav {
    pub fn new(active: &str) -> Nav {
        Nav {
            items: NAV.iter().map(|(href, label)| NavItem { href, label, active: *href == active }).collect(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}
