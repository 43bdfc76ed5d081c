//! Candidate identities.

/// A fresh identity: `hostname_pid_suffix`, unique per call (seed 001's instance identity).
pub fn default_identity() -> String {
    use rand::Rng;
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let host = if host.is_empty() { "localhost" } else { &host };
    let suffix: u32 = rand::thread_rng().gen();
    format!("{host}_{}_{suffix:08x}", std::process::id())
}
