//! One test in a process of its own, for a test that leaves process-wide state behind (the
//! worker's note that stops every `run` in the process, say) while the other tests of its binary
//! run beside it in the same process.

use std::process::Command;

/// Set, in the process of its own, to the name of the test it runs.
const VARIABLE: &str = "ENTRA_SYNC_TEST_OWN_PROCESS";

/// Whether the test `function` of `module` (`module_path!()`) runs its body here: yes in a
/// process of its own; anywhere else, this starts that process (the test binary again, running
/// that test alone), waits for it, fails with its output if the test failed there, and says no.
pub fn run_here(module: &str, function: &str) -> bool {
    // libtest names a test by its path without the crate's name.
    let test = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{function}"),
        None => function.to_owned(),
    };
    if std::env::var(VARIABLE).is_ok_and(|running| running == test) {
        return true;
    }
    let binary = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(binary)
        .args(["--exact", &test, "--nocapture", "--test-threads", "1"])
        .env(VARIABLE, &test)
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{test}, in a process of its own, failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its process of its own (is it named so?):\n{stdout}\n{stderr}"
    );
    false
}
