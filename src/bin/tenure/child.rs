//! The command `tenure run` and `tenure lock` supervise, and the guard process around it.
//!
//! `tenure` starts the command through a guard: itself again (`tenure __guard`), as the
//! leader of a new process group, which starts the command in that group and waits for it.
//! - Stopping (leadership lost, lock lost, `tenure` told to stop): `tenure` signals the whole
//!   group (SIGTERM, or the SIGINT it received), waits up to the grace period, then sends
//!   SIGKILL to the group; it waits for the guard, then SIGKILLs the group once more so that
//!   nothing the command started in it outlives the term.
//! - `tenure` itself dying (SIGKILL, OOM kill): the guard asked the kernel for SIGTERM when
//!   its parent dies (`PR_SET_PDEATHSIG`, and it checks its parent every second where that is
//!   not available), and then stops the group the same way: SIGTERM, grace, SIGKILL. No orphan
//!   keeps working without the lease.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{getpgrp, getpid, getppid, kill_process_group, Pid, Signal};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::sleep;

/// Exit status of a command killed by a signal: 128 + the signal's number, as shells report.
pub fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// Sends `sig` to process group `pgid`; a group that is gone already is fine.
pub fn signal_group(pgid: Pid, sig: Signal) {
    let _ = kill_process_group(pgid, sig);
}

/// Whether `cmd` names a program that can be started: `Err((exit code, message))` if not
/// (127: not found, 126: not executable), as a shell would say.
pub fn check_program(cmd: &OsString) -> Result<(), (i32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let shown = cmd.to_string_lossy();
    let path = std::path::Path::new(cmd);
    let candidates: Vec<std::path::PathBuf> = if shown.contains('/') {
        vec![path.to_path_buf()]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(cmd)).collect())
            .unwrap_or_default()
    };
    let mut found_unexecutable = false;
    for c in candidates {
        if let Ok(meta) = std::fs::metadata(&c) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(());
            }
            found_unexecutable = true;
        }
    }
    if found_unexecutable {
        Err((126, format!("cannot run {shown:?}: permission denied")))
    } else {
        Err((127, format!("cannot run {shown:?}: command not found")))
    }
}

/// `tenure __guard`: runs `command` in this process's group, mirrors its exit status, and
/// stops the whole group if `parent` dies. Never returns an error: prints one line and
/// returns an exit code.
pub async fn guard(parent: i32, grace: Duration, command: Vec<OsString>) -> i32 {
    let me = getpid();
    if getpgrp() != me {
        eprintln!("tenure: __guard is internal to `tenure run` and `tenure lock`");
        return 2;
    }
    // Ask for SIGTERM when `tenure` dies, then check that it has not died already.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
    let orphaned = || getppid().map(Pid::as_raw_nonzero).map(|p| p.get()) != Some(parent);
    if orphaned() {
        return 70;
    }
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("tenure: cannot install signal handlers");
            return 70;
        }
    };
    let Some((program, args)) = command.split_first() else {
        return 2;
    };
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            let (code, why) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found".to_owned()),
                std::io::ErrorKind::PermissionDenied => (126, "permission denied".to_owned()),
                _ => (126, e.to_string()),
            };
            eprintln!("tenure: cannot run {:?}: {why}", program.to_string_lossy());
            return code;
        }
    };
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => status_code(s),
                    Err(_) => 70,
                };
            }
            // Signals sent to the group reach the command too: the guard only checks whether
            // they mean that `tenure` died.
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
            _ = check.tick() => {}
        }
        if orphaned() {
            eprintln!(
                "tenure: the supervising `tenure` process died; stopping the command (SIGTERM, then SIGKILL after {grace:?})"
            );
            signal_group(me, Signal::TERM);
            let _ = tokio::time::timeout(grace, child.wait()).await;
            // SIGKILL the whole group, the guard included: nothing outlives the lease.
            signal_group(me, Signal::KILL);
            sleep(Duration::from_secs(1)).await;
            return 137;
        }
    }
}
