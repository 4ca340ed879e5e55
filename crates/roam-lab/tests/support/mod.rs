//! Shared by the namespace tests.

/// Whether to run a namespace test: `false` (skip, said on stderr) only when
/// `ROAM_SKIP_NETNS=1`; a panic with the reason when the lab cannot run here, so a
/// machine without root fails loudly instead of passing silently.
pub fn lab_enabled() -> bool {
    match roam_lab::lab_available() {
        Ok(true) => true,
        Ok(false) => {
            eprintln!("skipped: ROAM_SKIP_NETNS=1");
            false
        }
        Err(e) => panic!("{e}"),
    }
}
