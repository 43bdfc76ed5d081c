//! The backend tests' one rule for a missing server: with `TENURE_REQUIRE_BACKENDS=1` (set by
//! `scripts/test.sh` and CI) it fails the test; otherwise the test is skipped, loudly.

/// The value of `var` (the address of a server `scripts/test-services.sh` started), or `None`
/// after a loud skip notice for `test`; a panic when backends are required.
pub fn env_or_skip(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TENURE_REQUIRE_BACKENDS").as_deref() != Ok("1"),
                "{test}: {var} is not set, and TENURE_REQUIRE_BACKENDS=1 requires this backend's \
                 tests to run: start its server with scripts/test-services.sh (scripts/test.sh \
                 does)"
            );
            eprintln!(
                "SKIPPED: {test}: {var} is not set (run scripts/test.sh, or \
                 `scripts/test-services.sh start DIR` and `source DIR/env`)"
            );
            None
        }
    }
}
