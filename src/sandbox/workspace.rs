//! Synthetic workspaces: a seeded generator of small, realistic repositories (Python service with
//! a db layer, auth, config, API handlers and tests; a JS frontend; SQL, TOML, YAML, Dockerfile,
//! logs, CSV data, a fake git history) with planted facts — where auth lives, which test fails and
//! why, the CORS misconfiguration, the logged error, the SQL injection, the Docker port mismatch.
//! The same seed always gives the same workspace; `facts` names everything a template may cite.

use std::collections::BTreeMap;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One fake commit of the workspace's history.
#[derive(Debug, Clone)]
pub struct Commit {
    pub hash: String,
    pub author: String,
    pub date: String,
    pub message: String,
}

/// A workspace: files in memory, the planted facts, and the original state (for git diff).
#[derive(Debug, Clone)]
pub struct Workspace {
    pub seed: u64,
    pub root: String,
    pub files: BTreeMap<String, String>,
    pub original: BTreeMap<String, String>,
    pub facts: BTreeMap<String, String>,
    pub history: Vec<Commit>,
}

const PROJECTS: &[&str] = &[
    "ledgerly",
    "tidepool",
    "orbitdesk",
    "parcelhub",
    "quillstack",
    "brightcart",
    "fernwood",
    "kitehq",
    "mosaicpay",
    "northwind-api",
    "harborline",
    "pinecrest",
    "lumenboard",
    "sparrowmail",
    "cobaltcrm",
    "driftwood",
    "emberlog",
    "glasshouse",
    "ironbridge",
    "junipr",
    "acornbooks",
    "bluefin-ops",
    "canopy",
    "dockyard",
    "everpost",
    "fieldnote",
    "granary",
    "hollowpine",
    "inkwell-api",
    "jetstream-billing",
    "keystone-hr",
    "larkspur",
    "meridian-crm",
    "nimbus-desk",
    "oakline",
    "pebblepay",
    "quarry",
    "riverbend",
    "saltmarsh",
    "thimble",
];
const ENTITIES: &[(&str, &str)] = &[
    ("user", "users"),
    ("order", "orders"),
    ("invoice", "invoices"),
    ("customer", "customers"),
    ("ticket", "tickets"),
    ("product", "products"),
    ("shipment", "shipments"),
    ("subscription", "subscriptions"),
    ("booking", "bookings"),
    ("payment", "payments"),
    ("account", "accounts"),
    ("project", "projects"),
    ("report", "reports"),
    ("vendor", "vendors"),
    ("warehouse", "warehouses"),
    ("coupon", "coupons"),
];
const AUTHORS: &[&str] =
    &["Ana Ruiz", "Tom Becker", "Priya Natarajan", "Wei Zhang", "Sam O'Neill", "Lena Fischer", "Kofi Mensah"];
const DEPENDENCIES: &[(&str, &str, &str)] = &[
    ("requests", "2.25.1", "2.32.3"),
    ("flask", "2.0.3", "3.0.3"),
    ("sqlalchemy", "1.4.46", "2.0.31"),
    ("pyjwt", "2.4.0", "2.8.0"),
    ("pydantic", "1.10.2", "2.7.4"),
    ("gunicorn", "20.1.0", "22.0.0"),
    ("redis", "4.3.4", "5.0.7"),
    ("celery", "5.2.7", "5.4.0"),
];
const FRONTEND_PORTS: &[u16] = &[3000, 5173, 4200, 8081];
const APP_PORTS: &[u16] = &[8000, 8080, 5000, 9000];

/// The planted auth bug: (buggy line, fixed line, why it fails, the test that catches it).
const AUTH_BUGS: &[(&str, &str, &str, &str)] = &[
    (
        "    return token.expires_at >= now or True",
        "    return token.expires_at >= now",
        "the trailing `or True` makes every token valid, so expired tokens are accepted",
        "test_rejects_expired_token",
    ),
    (
        "    return token.expires_at * 1000 >= now",
        "    return token.expires_at >= now",
        "expires_at is in seconds but is multiplied by 1000, so tokens never expire",
        "test_rejects_expired_token",
    ),
    (
        "    return token.expires_at <= now",
        "    return token.expires_at >= now",
        "the comparison is inverted: valid tokens are rejected and expired ones accepted",
        "test_accepts_fresh_token",
    ),
];

/// A helper with known behaviour, for test writing and refactoring.
const HELPERS: &[(&str, &str, &str, &str)] = &[
    (
        "slugify",
        "def slugify(text):\n    \"\"\"Lower-case text and join its words with dashes.\"\"\"\n    words = \"\".join(c if c.isalnum() else \" \" for c in text).split()\n    return \"-\".join(w.lower() for w in words)\n",
        "slugify(\"Hello, World\")",
        "\"hello-world\"",
    ),
    (
        "format_money",
        "def format_money(amount, currency=\"$\"):\n    \"\"\"Format an amount with thousands separators and two decimals.\"\"\"\n    return f\"{currency}{amount:,.2f}\"\n",
        "format_money(1234.5)",
        "\"$1,234.50\"",
    ),
    (
        "truncate_words",
        "def truncate_words(text, limit):\n    \"\"\"Keep the first `limit` words, adding an ellipsis when words were dropped.\"\"\"\n    words = text.split()\n    if len(words) <= limit:\n        return text\n    return \" \".join(words[:limit]) + \"...\"\n",
        "truncate_words(\"one two three four\", 2)",
        "\"one two...\"",
    ),
    (
        "parse_bool",
        "def parse_bool(value):\n    \"\"\"Read yes/no style strings as booleans.\"\"\"\n    return str(value).strip().lower() in (\"1\", \"true\", \"yes\", \"on\")\n",
        "parse_bool(\"Yes\")",
        "True",
    ),
];

/// Errors planted in the log: (component, message, cause for the answer, config key involved).
const LOG_ERRORS: &[(&str, &str, &str)] = &[
    (
        "db.pool",
        "could not connect to postgres://db:5433/app: connection refused",
        "the database URL points at port 5433 but Postgres listens on 5432",
    ),
    (
        "payments.client",
        "timeout after 30000 ms calling https://payments.internal/charge",
        "the payments service timed out after 30 s",
    ),
    (
        "auth.tokens",
        "signature verification failed: key id 'k2' not found in JWKS",
        "the signing key 'k2' is missing from the JWKS",
    ),
    (
        "worker.email",
        "SMTPAuthenticationError: 535 5.7.8 Username and Password not accepted",
        "the SMTP credentials are rejected",
    ),
];

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("non-empty pool")
}

/// 1-based line number of the first line containing `needle`.
pub fn line_of(content: &str, needle: &str) -> Option<usize> {
    content.lines().position(|line| line.contains(needle)).map(|i| i + 1)
}

impl Workspace {
    pub fn generate(seed: u64) -> Workspace {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_cafe_f00d);
        let project = pick(&mut rng, PROJECTS).to_string();
        let package = project.replace('-', "_");
        let (entity, entities) = *pick(&mut rng, ENTITIES);
        let app_port = *pick(&mut rng, APP_PORTS);
        let wrong_port = loop {
            let candidate = *pick(&mut rng, APP_PORTS);
            if candidate != app_port {
                break candidate;
            }
        };
        let frontend_port = *pick(&mut rng, FRONTEND_PORTS);
        let allowed_port = loop {
            let candidate = *pick(&mut rng, FRONTEND_PORTS);
            if candidate != frontend_port {
                break candidate;
            }
        };
        let (bug_old, bug_new, bug_reason, failing_test) = *pick(&mut rng, AUTH_BUGS);
        let (helper, helper_source, helper_call, helper_result) = *pick(&mut rng, HELPERS);
        let (log_component, log_message, log_cause) = *pick(&mut rng, LOG_ERRORS);
        let (dep_name, dep_old, dep_new) = *pick(&mut rng, DEPENDENCIES);
        let csv_rows: usize = rng.random_range(12..48);
        let rename_old = "get_db";
        let rename_new = *pick(&mut rng, &["open_connection", "connect_db", "db_session", "acquire_connection"]);

        let mut files = BTreeMap::new();
        let src = format!("src/{package}");
        let title = format!("{}{}", entity[..1].to_uppercase(), &entity[1..]);

        files.insert(
            "README.md".to_string(),
            format!(
                "# {project}\n\nA small service that manages {entities} over a JSON API, with a React-free vanilla JS dashboard.\n\n\
                 ## Layout\n\n- `{src}/api/` HTTP handlers and routes\n- `{src}/auth/` token checks and the `require_auth` decorator\n\
                 - `{src}/db/` SQL queries per table\n- `config/settings.toml` runtime settings (port, database, CORS)\n\
                 - `frontend/` the dashboard\n- `tests/` pytest suite\n\n## Running\n\n    pip install -r requirements.txt\n    \
                 python -m {package}.server\n\n## Tests\n\n    python -m pytest\n"
            ),
        );
        files.insert(
            format!("{src}/__init__.py"),
            format!(
                "\"\"\"{project}: {entities} service.\"\"\"\n__version__ = \"0.{}.{}\"\n",
                rng.random_range(1..9),
                rng.random_range(0..20)
            ),
        );
        files.insert(
            format!("{src}/config.py"),
            format!(
                "import os\nimport tomllib\n\nDEFAULT_PORT = {app_port}\nSETTINGS_PATH = os.environ.get(\"{upper}_SETTINGS\", \"config/settings.toml\")\n\n\n\
                 def load_settings(path=SETTINGS_PATH):\n    with open(path, \"rb\") as handle:\n        settings = tomllib.load(handle)\n    \
                 settings.setdefault(\"server\", {{}}).setdefault(\"port\", DEFAULT_PORT)\n    return settings\n",
                upper = package.to_uppercase()
            ),
        );
        files.insert(
            format!("{src}/db/connection.py"),
            format!(
                "import sqlite3\n\nfrom {package}.config import load_settings\n\n\ndef {rename_old}():\n    \"\"\"Open a connection to the configured database.\"\"\"\n    \
                 settings = load_settings()\n    conn = sqlite3.connect(settings[\"database\"][\"path\"])\n    conn.row_factory = sqlite3.Row\n    return conn\n"
            ),
        );
        files.insert(
            format!("{src}/db/{entities}.py"),
            format!(
                "from {package}.db.connection import {rename_old}\n\n\ndef find_{entity}({entity}_id):\n    conn = {rename_old}()\n    \
                 cur = conn.execute(\"SELECT * FROM {entities} WHERE id = ?\", ({entity}_id,))\n    return cur.fetchone()\n\n\n\
                 def list_{entities}(limit=50, offset=0):\n    conn = {rename_old}()\n    \
                 cur = conn.execute(\"SELECT * FROM {entities} ORDER BY created_at DESC LIMIT ? OFFSET ?\", (limit, offset))\n    return cur.fetchall()\n\n\n\
                 def search_{entities}(term):\n    conn = {rename_old}()\n    \
                 cur = conn.execute(f\"SELECT * FROM {entities} WHERE name LIKE '%{{term}}%'\")\n    return cur.fetchall()\n\n\n\
                 def create_{entity}(name, owner_id):\n    conn = {rename_old}()\n    \
                 conn.execute(\"INSERT INTO {entities} (name, owner_id) VALUES (?, ?)\", (name, owner_id))\n    conn.commit()\n"
            ),
        );
        files.insert(
            format!("{src}/auth/tokens.py"),
            format!(
                "import time\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass Token:\n    subject: str\n    expires_at: int  # seconds since the epoch\n\n\n\
                 def parse_header(value):\n    \"\"\"Token from an `Authorization: Bearer <subject>.<expiry>` header, or None.\"\"\"\n    \
                 if not value.startswith(\"Bearer \"):\n        return None\n    subject, _, expiry = value[7:].partition(\".\")\n    \
                 return Token(subject=subject, expires_at=int(expiry or 0))\n\n\n\
                 def check_token(token, now=None):\n    \"\"\"True when the token has not expired yet.\"\"\"\n    now = time.time() if now is None else now\n{bug_old}\n"
            ),
        );
        files.insert(
            format!("{src}/auth/middleware.py"),
            format!(
                "from functools import wraps\n\nfrom {package}.auth.tokens import check_token, parse_header\n\n\ndef require_auth(handler):\n    \
                 \"\"\"Reject requests without a valid bearer token.\"\"\"\n    @wraps(handler)\n    def wrapper(request, *args, **kwargs):\n        \
                 token = parse_header(request.headers.get(\"Authorization\", \"\"))\n        if token is None or not check_token(token):\n            \
                 return {{\"error\": \"unauthorized\"}}, 401\n        return handler(request, *args, **kwargs)\n    return wrapper\n"
            ),
        );
        files.insert(
            format!("{src}/api/handlers.py"),
            format!(
                "from {package}.auth.middleware import require_auth\nfrom {package}.db import {entities}\n\n\n@require_auth\ndef get_{entity}(request, {entity}_id):\n    \
                 row = {entities}.find_{entity}({entity}_id)\n    if row is None:\n        return {{\"error\": \"{entity} not found\"}}, 404\n    return dict(row), 200\n\n\n\
                 @require_auth\ndef list_{entities}_handler(request):\n    limit = int(request.args.get(\"limit\", 50))\n    \
                 return [dict(r) for r in {entities}.list_{entities}(limit=limit)], 200\n\n\n@require_auth\ndef search_{entities}_handler(request):\n    \
                 return [dict(r) for r in {entities}.search_{entities}(request.args[\"q\"])], 200\n"
            ),
        );
        files.insert(
            format!("{src}/api/routes.py"),
            format!(
                "from {package}.api import handlers\n\nROUTES = [\n    (\"GET\", \"/api/{entities}\", handlers.list_{entities}_handler),\n    \
                 (\"GET\", \"/api/{entities}/search\", handlers.search_{entities}_handler),\n    (\"GET\", \"/api/{entities}/<id>\", handlers.get_{entity}),\n]\n"
            ),
        );
        for subpackage in ["api", "auth", "db", "utils"] {
            files.insert(format!("{src}/{subpackage}/__init__.py"), String::new());
        }
        files.insert(
            format!("{src}/utils/text.py"),
            format!("\"\"\"Small text helpers shared by the API and the jobs.\"\"\"\n\n\n{helper_source}"),
        );
        files.insert(
            format!("{src}/server.py"),
            format!(
                "from {package}.api.routes import ROUTES\nfrom {package}.config import load_settings\n\n\ndef main():\n    settings = load_settings()\n    \
                 port = settings[\"server\"][\"port\"]\n    print(f\"serving {{len(ROUTES)}} routes on :{{port}}\")\n\n\nif __name__ == \"__main__\":\n    main()\n"
            ),
        );
        files.insert(
            "tests/test_auth.py".to_string(),
            format!(
                "from {package}.auth.tokens import Token, check_token\n\n\ndef test_accepts_fresh_token():\n    \
                 assert check_token(Token(subject=\"ana\", expires_at=2000), now=1000) is True\n\n\n\
                 def test_rejects_expired_token():\n    assert check_token(Token(subject=\"ana\", expires_at=1000), now=2000) is False\n"
            ),
        );
        files.insert(
            format!("tests/test_{entities}.py"),
            format!(
                "from {package}.db import {entities}\n\n\ndef test_find_missing_{entity}_returns_none(db):\n    assert {entities}.find_{entity}(999) is None\n\n\n\
                 def test_list_{entities}_respects_limit(db):\n    assert len({entities}.list_{entities}(limit=2)) <= 2\n\n\n\
                 def test_create_{entity}(db):\n    {entities}.create_{entity}(\"first\", owner_id=1)\n    assert {entities}.list_{entities}()[0][\"name\"] == \"first\"\n"
            ),
        );
        files.insert("tests/conftest.py".to_string(), format!("import pytest\n\n\n@pytest.fixture\ndef db(tmp_path, monkeypatch):\n    monkeypatch.setenv(\"{}_SETTINGS\", str(tmp_path / \"settings.toml\"))\n    yield tmp_path\n", package.to_uppercase()));
        let allowed_origin = format!("http://localhost:{allowed_port}");
        let frontend_origin = format!("http://localhost:{frontend_port}");
        files.insert(
            "config/settings.toml".to_string(),
            format!(
                "[server]\nport = {app_port}\nworkers = {}\n\n[database]\npath = \"var/{package}.db\"\nurl = \"postgres://db:5432/app\"\npool_size = {}\n\n\
                 [cors]\nallowed_origins = [\"{allowed_origin}\"]\nallow_credentials = true\n\n[logging]\nlevel = \"info\"\nfile = \"logs/app.log\"\n",
                rng.random_range(2..9),
                rng.random_range(5..21)
            ),
        );
        files.insert(
            "config/logging.yaml".to_string(),
            "version: 1\nhandlers:\n  file:\n    class: logging.FileHandler\n    filename: logs/app.log\n    formatter: plain\nformatters:\n  plain:\n    format: \"%(asctime)s %(levelname)s %(name)s: %(message)s\"\nroot:\n  level: INFO\n  handlers: [file]\n".to_string(),
        );
        files.insert(
            "frontend/src/api.js".to_string(),
            format!(
                "// Dashboard API client. Served from {frontend_origin}.\nconst API_BASE = \"http://localhost:{app_port}/api\";\n\n\
                 export async function list{title}s(limit = 50) {{\n  const response = await fetch(`${{API_BASE}}/{entities}?limit=${{limit}}`, {{ credentials: \"include\" }});\n  \
                 if (!response.ok) throw new Error(`HTTP ${{response.status}}`);\n  return response.json();\n}}\n\n\
                 export async function search{title}s(term) {{\n  const response = await fetch(`${{API_BASE}}/{entities}/search?q=${{encodeURIComponent(term)}}`);\n  return response.json();\n}}\n"
            ),
        );
        files.insert(
            "frontend/package.json".to_string(),
            format!(
                "{{\n  \"name\": \"{project}-dashboard\",\n  \"private\": true,\n  \"scripts\": {{ \"dev\": \"vite --port {frontend_port}\", \"build\": \"vite build\" }},\n  \
                 \"devDependencies\": {{ \"vite\": \"^5.2.0\" }}\n}}\n"
            ),
        );
        files.insert("requirements.txt".to_string(), {
            let mut lines: Vec<String> =
                DEPENDENCIES.iter().filter(|d| d.0 != dep_name).take(4).map(|(n, v, _)| format!("{n}=={v}")).collect();
            lines.push(format!("{dep_name}=={dep_old}"));
            lines.sort();
            lines.push("pytest==8.2.2".to_string());
            lines.join("\n") + "\n"
        });
        files.insert(
            "Dockerfile".to_string(),
            format!(
                "FROM python:3.12-slim\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install --no-cache-dir -r requirements.txt\nCOPY . .\n\
                 EXPOSE {wrong_port}\nCMD [\"python\", \"-m\", \"{package}.server\"]\n"
            ),
        );
        files.insert(
            "deploy/docker-compose.yml".to_string(),
            format!(
                "services:\n  api:\n    build: ..\n    ports:\n      - \"{app_port}:{app_port}\"\n    depends_on: [db]\n  db:\n    image: postgres:16\n    \
                 environment:\n      POSTGRES_DB: app\n    ports:\n      - \"5432:5432\"\n"
            ),
        );
        files.insert(
            "migrations/001_init.sql".to_string(),
            format!(
                "CREATE TABLE {entities} (\n    id INTEGER PRIMARY KEY,\n    name TEXT NOT NULL,\n    owner_id INTEGER NOT NULL,\n    status TEXT NOT NULL DEFAULT 'open',\n    \
                 created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP\n);\n\nCREATE INDEX {entities}_owner ON {entities} (owner_id);\n"
            ),
        );
        files.insert("scripts/migrate.sh".to_string(), "#!/bin/sh\nset -e\nfor f in migrations/*.sql; do\n  echo \"applying $f\"\n  sqlite3 var/app.db < \"$f\"\ndone\n".to_string());
        files.insert("Makefile".to_string(), "test:\n\tpython -m pytest -q\n\nrun:\n\tpython -m server\n".to_string());
        files.insert(".gitignore".to_string(), "__pycache__/\nvar/\n*.pyc\nnode_modules/\n".to_string());

        // Data: a CSV with a planted number of rows and statuses.
        let statuses = ["open", "closed", "overdue", "pending"];
        let mut csv = "id,name,owner_id,status\n".to_string();
        let mut status_counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in 1..=csv_rows {
            let status = *pick(&mut rng, &statuses);
            *status_counts.entry(status).or_default() += 1;
            csv.push_str(&format!("{id},{entity}-{id:03},{},{status}\n", rng.random_range(1..20)));
        }
        let counted_status = *status_counts.iter().max_by_key(|(_, n)| **n).map(|(s, _)| s).unwrap_or(&"open");
        files.insert(format!("data/{entities}.csv"), csv);

        // Logs with one planted error among routine lines.
        let mut log = String::new();
        let n_lines: usize = rng.random_range(24..40);
        let error_at = rng.random_range(n_lines / 3..n_lines - 2);
        let mut error_line = 0;
        for i in 0..n_lines {
            let stamp = format!(
                "2026-11-{:02} {:02}:{:02}:{:02}",
                rng.random_range(10..27),
                8 + i / 6,
                (i * 7) % 60,
                (i * 13) % 60
            );
            if i == error_at {
                log.push_str(&format!("{stamp} ERROR {log_component}: {log_message}\n"));
                error_line = i + 1;
            } else {
                let routine = match rng.random_range(0..5) {
                    0 => format!("INFO http: GET /api/{entities} 200 {}ms", rng.random_range(3..90)),
                    1 => format!(
                        "INFO http: GET /api/{entities}/{} 200 {}ms",
                        rng.random_range(1..500),
                        rng.random_range(2..40)
                    ),
                    2 => "INFO worker: heartbeat ok".to_string(),
                    3 => format!("WARN http: GET /api/{entities}/search 401 1ms"),
                    _ => "INFO scheduler: nightly cleanup done".to_string(),
                };
                log.push_str(&format!("{stamp} {routine}\n"));
            }
        }
        files.insert("logs/app.log".to_string(), log);

        let mut facts = BTreeMap::new();
        let mut fact = |key: &str, value: String| {
            facts.insert(key.to_string(), value);
        };
        let auth_file = format!("{src}/auth/tokens.py");
        let db_file = format!("{src}/db/{entities}.py");
        fact("project", project.clone());
        fact("package", package.clone());
        fact("src", src.clone());
        fact("entity", entity.to_string());
        fact("entities", entities.to_string());
        fact("root", format!("/home/dev/{project}"));
        fact("auth_file", auth_file.clone());
        fact("auth_function", "check_token".into());
        fact("middleware_file", format!("{src}/auth/middleware.py"));
        fact("middleware_function", "require_auth".into());
        fact("db_file", db_file.clone());
        fact("find_function", format!("find_{entity}"));
        fact("list_function", format!("list_{entities}"));
        fact("create_function", format!("create_{entity}"));
        fact("connection_file", format!("{src}/db/connection.py"));
        fact("handlers_file", format!("{src}/api/handlers.py"));
        fact("routes_file", format!("{src}/api/routes.py"));
        fact("config_module", format!("{src}/config.py"));
        fact("settings_file", "config/settings.toml".into());
        fact("app_port", app_port.to_string());
        fact("wrong_port", wrong_port.to_string());
        fact("allowed_origin", allowed_origin.clone());
        fact("frontend_origin", frontend_origin.clone());
        fact("cors_old", format!("allowed_origins = [\"{allowed_origin}\"]"));
        fact("cors_new", format!("allowed_origins = [\"{allowed_origin}\", \"{frontend_origin}\"]"));
        fact("failing_test", failing_test.into());
        fact("failing_test_file", "tests/test_auth.py".into());
        fact("bug_file", auth_file.clone());
        fact("bug_old", bug_old.trim().to_string());
        fact("bug_new", bug_new.trim().to_string());
        fact("bug_reason", bug_reason.into());
        fact("helper_file", format!("{src}/utils/text.py"));
        fact("helper_module", format!("{package}.utils.text"));
        fact("helper_function", helper.into());
        fact("helper_call", helper_call.into());
        fact("helper_result", helper_result.into());
        fact("new_test_file", format!("tests/test_{helper}.py"));
        fact(
            "new_test_content",
            format!("from {package}.utils.text import {helper}\n\n\ndef test_{helper}_example():\n    assert {helper_call} == {helper_result}\n"),
        );
        fact("log_file", "logs/app.log".into());
        fact("log_component", log_component.into());
        fact("log_message", log_message.into());
        fact("log_cause", log_cause.into());
        fact("log_error_line", error_line.to_string());
        fact("dep_file", "requirements.txt".into());
        fact("dep_name", dep_name.into());
        fact("dep_old", format!("{dep_name}=={dep_old}"));
        fact("dep_new", format!("{dep_name}=={dep_new}"));
        fact("dep_old_version", dep_old.into());
        fact("dep_new_version", dep_new.into());
        fact("docker_file", "Dockerfile".into());
        fact("docker_old", format!("EXPOSE {wrong_port}"));
        fact("docker_new", format!("EXPOSE {app_port}"));
        fact("compose_file", "deploy/docker-compose.yml".into());
        fact("rename_old", rename_old.into());
        fact("rename_new", rename_new.into());
        fact("injection_function", format!("search_{entities}"));
        fact("csv_file", format!("data/{entities}.csv"));
        fact("csv_rows", csv_rows.to_string());
        fact("csv_lines", (csv_rows + 1).to_string());
        fact("csv_status", counted_status.to_string());
        fact("csv_status_count", status_counts.get(counted_status).copied().unwrap_or(0).to_string());
        fact("migration_file", "migrations/001_init.sql".into());
        let db_source = &files[&db_file];
        fact("injection_line", line_of(db_source, "f\"SELECT").unwrap_or(0).to_string());
        fact("bug_line", line_of(&files[&auth_file], bug_old.trim()).unwrap_or(0).to_string());
        fact("cors_line", line_of(&files["config/settings.toml"], "allowed_origins").unwrap_or(0).to_string());
        fact("docker_line", line_of(&files["Dockerfile"], "EXPOSE").unwrap_or(0).to_string());
        fact("rename_count", files.values().map(|c| c.matches(rename_old).count()).sum::<usize>().to_string());
        fact("rename_files", files.values().filter(|c| c.contains(rename_old)).count().to_string());

        let mut history = Vec::new();
        let messages = [
            format!("Initial commit: {project} skeleton"),
            format!("Add {entities} table and queries"),
            "Add bearer token auth".to_string(),
            format!("Dashboard: list and search {entities}"),
            "Configure CORS for the dashboard".to_string(),
            "Add Dockerfile and compose setup".to_string(),
        ];
        let n_commits = rng.random_range(3..=messages.len());
        for (index, message) in messages.iter().take(n_commits).enumerate() {
            history.push(Commit {
                hash: format!("{:07x}", rng.random_range(0x1000000u32..0xfffffff)),
                author: pick(&mut rng, AUTHORS).to_string(),
                date: format!("2026-{:02}-{:02}", 6 + index, rng.random_range(1..28)),
                message: message.clone(),
            });
        }
        history.reverse();

        Workspace { seed, root: format!("/home/dev/{project}"), original: files.clone(), files, facts, history }
    }

    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_workspace_and_facts_point_at_real_text() {
        let a = Workspace::generate(42);
        let b = Workspace::generate(42);
        assert_eq!(a.files, b.files);
        assert_eq!(a.facts, b.facts);
        assert!(a.files.len() >= 25, "{} files", a.files.len());
        let different = (0..20).map(Workspace::generate).filter(|w| w.files != a.files).count();
        assert!(different >= 18);
        for seed in 0..50 {
            let w = Workspace::generate(seed);
            let bug_file = &w.files[w.fact("bug_file").unwrap()];
            assert!(bug_file.contains(w.fact("bug_old").unwrap()));
            assert!(w.files[w.fact("settings_file").unwrap()].contains(w.fact("cors_old").unwrap()));
            assert!(w.files["Dockerfile"].contains(w.fact("docker_old").unwrap()));
            assert!(w.files["requirements.txt"].contains(w.fact("dep_old").unwrap()));
            assert!(w.files[w.fact("log_file").unwrap()].contains(w.fact("log_message").unwrap()));
            assert_ne!(w.fact("injection_line"), Some("0"));
        }
    }
}
