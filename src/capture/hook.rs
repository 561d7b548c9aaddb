//! The `SessionEnd` hook in Claude Code's settings (shared reference A6): building its command,
//! adding it to and removing it from a parsed settings document, and rewriting the file safely
//! (a timestamped backup, then a temp file renamed over the original). Only the entry whose
//! command carries `MARKER` is ever touched; other hooks and settings pass through untouched.
//! Nothing here knows where the settings file lives: the CLI resolves the path.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// Present in every command `install` writes; `uninstall` removes exactly the entries holding it.
pub const MARKER: &str = "understudy-capture";
/// The hook event Understudy listens to.
pub const EVENT: &str = "SessionEnd";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON (nothing was written)")]
    Invalid { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {what} is not {expected}; nothing was written")]
    Shape { path: PathBuf, what: String, expected: &'static str },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Quote a string for a POSIX shell: double quotes when nothing in it is special there (so the
/// command stays readable inside the outer single quotes), else single quotes.
fn shell_quote(text: &str) -> String {
    if text.contains(['"', '$', '`', '\\', '\'', '!']) {
        format!("'{}'", text.replace('\'', r"'\''"))
    } else {
        format!("\"{text}\"")
    }
}

/// The hook's command: touch the engine's trigger file and exit 0 whatever happens. The marker
/// is the inner shell's `$0`, so it is part of the command without changing what it does.
pub fn hook_command(trigger_file: &Path) -> String {
    let script = format!("touch {} 2>/dev/null; exit 0", shell_quote(&trigger_file.to_string_lossy()));
    format!("sh -c '{}' {MARKER}", script.replace('\'', r"'\''"))
}

fn is_ours(hook: &Value) -> bool {
    hook.get("command").and_then(Value::as_str).is_some_and(|c| c.contains(MARKER))
}

/// What `install` did to the document.
#[derive(Debug, Clone, PartialEq)]
pub enum InstallOutcome {
    /// The entry was appended to `hooks.SessionEnd`.
    Added(Value),
    /// An entry of ours pointed elsewhere (another data dir); its command was replaced.
    Updated(Value),
    AlreadyInstalled,
}

/// The `hooks.SessionEnd` array, created when absent; `None` when the document has another shape.
fn session_end_groups(settings: &mut Value, create: bool) -> Result<Option<&mut Vec<Value>>, (String, &'static str)> {
    let Some(root) = settings.as_object_mut() else { return Err(("the document".into(), "an object")) };
    if !root.contains_key("hooks") {
        if !create {
            return Ok(None);
        }
        root.insert("hooks".into(), Value::Object(Map::new()));
    }
    let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) else {
        return Err(("\"hooks\"".into(), "an object"));
    };
    if !hooks.contains_key(EVENT) {
        if !create {
            return Ok(None);
        }
        hooks.insert(EVENT.into(), Value::Array(Vec::new()));
    }
    match hooks.get_mut(EVENT).and_then(Value::as_array_mut) {
        Some(groups) => Ok(Some(groups)),
        None => Err((format!("\"hooks.{EVENT}\""), "an array")),
    }
}

/// Add the hook running `command` to a settings document.
pub fn install(settings: &mut Value, command: &str, path: &Path) -> Result<InstallOutcome, HookError> {
    let shape =
        |(what, expected): (String, &'static str)| HookError::Shape { path: path.to_path_buf(), what, expected };
    let groups = session_end_groups(settings, true).map_err(shape)?.expect("created when absent");
    for group in groups.iter_mut() {
        let Some(hooks) = group.get_mut("hooks").and_then(Value::as_array_mut) else { continue };
        if let Some(hook) = hooks.iter_mut().find(|h| is_ours(h)) {
            if hook["command"] == command {
                return Ok(InstallOutcome::AlreadyInstalled);
            }
            hook["command"] = Value::String(command.to_string());
            return Ok(InstallOutcome::Updated(group.clone()));
        }
    }
    let entry = json!({"hooks": [{"type": "command", "command": command, "timeout": 10}]});
    groups.push(entry.clone());
    Ok(InstallOutcome::Added(entry))
}

/// Remove every hook of ours; a group, event list or `hooks` object left empty by the removal
/// goes too, so an install followed by an uninstall gives back the original document.
/// Returns how many hooks were removed.
pub fn uninstall(settings: &mut Value, path: &Path) -> Result<usize, HookError> {
    let shape =
        |(what, expected): (String, &'static str)| HookError::Shape { path: path.to_path_buf(), what, expected };
    let Some(groups) = session_end_groups(settings, false).map_err(shape)? else { return Ok(0) };
    let mut removed = 0;
    groups.retain_mut(|group| {
        let Some(hooks) = group.get_mut("hooks").and_then(Value::as_array_mut) else { return true };
        let before = hooks.len();
        hooks.retain(|h| !is_ours(h));
        let gone = before - hooks.len();
        removed += gone;
        !(gone > 0 && hooks.is_empty())
    });
    if removed > 0 && groups.is_empty() {
        let hooks = settings["hooks"].as_object_mut().expect("checked above");
        hooks.remove(EVENT);
        if hooks.is_empty() {
            settings.as_object_mut().expect("checked above").remove("hooks");
        }
    }
    Ok(removed)
}

/// Whether the document holds a hook of ours.
pub fn is_installed(settings: &Value) -> bool {
    settings
        .pointer(&format!("/hooks/{EVENT}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|group| group.get("hooks").and_then(Value::as_array))
        .flatten()
        .any(is_ours)
}

/// A settings file's document; a missing file is an empty object (`exists` is false).
pub fn read_settings(path: &Path) -> Result<(Value, bool), HookError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok((Value::Object(Map::new()), true)),
        Ok(text) => {
            let value = serde_json::from_str(&text)
                .map_err(|source| HookError::Invalid { path: path.to_path_buf(), source })?;
            Ok((value, true))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok((Value::Object(Map::new()), false)),
        Err(source) => Err(HookError::Read { path: path.to_path_buf(), source }),
    }
}

/// Copy the current file to `<name>.understudy-backup-<timestamp>` (when it exists), then write
/// the document to a temp file beside it and rename it over the original. Returns the backup.
pub fn write_settings(path: &Path, settings: &Value) -> Result<Option<PathBuf>, HookError> {
    let write_error = |source| HookError::Write { path: path.to_path_buf(), source };
    let file_name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "settings.json".into());
    let backup = if path.exists() {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let backup = path.with_file_name(format!("{file_name}.understudy-backup-{stamp}"));
        std::fs::copy(path, &backup).map_err(write_error)?;
        Some(backup)
    } else {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        None
    };
    let temp = path.with_file_name(format!(".{file_name}.understudy-{}.tmp", std::process::id()));
    let mut text = serde_json::to_string_pretty(settings).expect("a JSON value serializes");
    text.push('\n');
    let written = std::fs::write(&temp, text).and_then(|()| {
        // Keep the original's permissions (settings may be private).
        if let Ok(metadata) = std::fs::metadata(path) {
            std::fs::set_permissions(&temp, metadata.permissions())?;
        }
        std::fs::rename(&temp, path)
    });
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(source));
    }
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_then_uninstall_gives_back_the_document() {
        let path = Path::new("settings.json");
        let original = json!({"model": "opus", "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}],
            "SessionEnd": [{"hooks": [{"type": "command", "command": "other"}]}]}});
        let mut settings = original.clone();
        let command = hook_command(Path::new("/data dir/it's/capture-engine.trigger"));
        assert!(matches!(install(&mut settings, &command, path).unwrap(), InstallOutcome::Added(_)));
        assert!(is_installed(&settings));
        assert_eq!(install(&mut settings, &command, path).unwrap(), InstallOutcome::AlreadyInstalled);
        assert_eq!(uninstall(&mut settings, path).unwrap(), 1);
        assert_eq!(settings, original);

        let mut empty = json!({});
        install(&mut empty, &command, path).unwrap();
        uninstall(&mut empty, path).unwrap();
        assert_eq!(empty, json!({}));
    }

    #[test]
    fn a_wrong_shape_is_an_error() {
        let mut settings = json!({"hooks": []});
        assert!(install(&mut settings, "c", Path::new("s.json")).is_err());
    }
}

/// What installing into a settings file did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileChange {
    /// `already_installed`, `added`, `updated`, `removed` or `not_installed`.
    pub action: &'static str,
    /// The hook entry written (install).
    pub entry: Option<Value>,
    /// Hooks removed (uninstall).
    pub removed: usize,
    pub backup: Option<PathBuf>,
}

/// Install the hook that touches `trigger_file` into the settings file at `path` (read, change,
/// back up, write atomically); the CLI and the Capture page both go through here.
pub fn install_file(path: &Path, trigger_file: &Path) -> Result<FileChange, HookError> {
    let (mut settings, _) = read_settings(path)?;
    let (action, entry) = match install(&mut settings, &hook_command(trigger_file), path)? {
        InstallOutcome::AlreadyInstalled => {
            return Ok(FileChange { action: "already_installed", entry: None, removed: 0, backup: None })
        }
        InstallOutcome::Added(entry) => ("added", entry),
        InstallOutcome::Updated(entry) => ("updated", entry),
    };
    let backup = write_settings(path, &settings)?;
    Ok(FileChange { action, entry: Some(entry), removed: 0, backup })
}

/// Remove exactly the hooks `install_file` adds from the settings file at `path`.
pub fn uninstall_file(path: &Path) -> Result<FileChange, HookError> {
    let (mut settings, exists) = read_settings(path)?;
    let removed = if exists { uninstall(&mut settings, path)? } else { 0 };
    if removed == 0 {
        return Ok(FileChange { action: "not_installed", entry: None, removed: 0, backup: None });
    }
    let backup = write_settings(path, &settings)?;
    Ok(FileChange { action: "removed", entry: None, removed, backup })
}
