//! Background helper processes of a data dir (the capture watcher, the orchestrator): JSON state
//! files written atomically, whether a pid is alive and runs a given subcommand, spawning this
//! binary detached in its own process group, and stopping it (SIGTERM, then SIGKILL).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Write through a temp file and a rename, so a reader never sees half a document.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&temp, path)
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else { return false };
    if pid_t <= 0 {
        return false;
    }
    // Safety: signal 0 only asks whether the process exists.
    let exists =
        unsafe { libc::kill(pid_t, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// Whether `pid`'s command line holds `subcommand` as consecutive arguments (where /proc says);
/// guards against a pid reused by an unrelated process.
pub fn runs_subcommand(pid: u32, subcommand: [&str; 2]) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2).any(|pair| pair[0] == subcommand[0].as_bytes() && pair[1] == subcommand[1].as_bytes())
        }
        Err(_) => true,
    }
}

/// Spawn `<binary> --data-dir <data_dir> <args>` detached: its own process group (a Ctrl-C in
/// the terminal that started it does not reach it), stdin closed, stderr appended to `log`,
/// working directory the data dir. `data_dir` must be absolute.
pub fn spawn(binary: &Path, data_dir: &Path, args: &[OsString], log: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = Command::new(binary);
    command.arg("--data-dir").arg(data_dir).args(args);
    command.env_remove("CLAUDE_CONFIG_DIR").current_dir(data_dir);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command.spawn()
}

/// Wait up to half a second for a just-spawned child to fail at once; its exit if it did.
pub fn exited_at_once(child: &mut Child) -> std::io::Result<Option<std::process::ExitStatus>> {
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(exit) = child.try_wait()? {
            return Ok(Some(exit));
        }
    }
    Ok(None)
}

#[derive(Debug)]
pub enum StopOutcome {
    NotRunning,
    /// Ended by SIGTERM.
    Stopped(u32),
    /// Needed SIGKILL.
    Killed(u32),
}

/// End `pid` (already checked to be ours): SIGTERM, SIGKILL after `grace`; then remove
/// `pid_path`.
pub fn terminate(pid: u32, pid_path: &Path, grace: Duration) -> StopOutcome {
    let pid_t = pid as libc::pid_t;
    // Safety: plain signals to the pid our own pid file names, checked by the caller.
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        reap(pid_t);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut outcome = StopOutcome::Stopped(pid);
    if alive(pid) {
        unsafe { libc::kill(pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        outcome = StopOutcome::Killed(pid);
    }
    reap(pid_t);
    let _ = std::fs::remove_file(pid_path);
    outcome
}

/// Collect the exit of `pid` if it is our own child (a server that started it), so no zombie
/// stays behind; a no-op for any other process.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // Safety: WNOHANG never blocks; a pid that is not our child answers ECHILD.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// The absolute data dir, created if missing.
pub fn absolute_data_dir(data_dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(data_dir)?;
    std::fs::canonicalize(data_dir)
}
