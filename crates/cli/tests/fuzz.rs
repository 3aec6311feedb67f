//! The cargo-fuzz targets (fuzz/: frame codec, layer tars, DNS resolver,
//! egress proxy parsers), each for SPINUP_FUZZ_SECONDS (60) from its seed
//! and regression corpus, through scripts/fuzz.sh. Any crash, hang or
//! out-of-memory fails the test with the target's output and the input's
//! path. Longer runs: `scripts/fuzz.sh run 600`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests report to the runner, which captures their output"
)]

use std::path::Path;
use std::process::Command;

#[test]
fn fuzz_targets_find_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let secs = std::env::var("SPINUP_FUZZ_SECONDS").unwrap_or_else(|_| "60".into());
    let out = Command::new(root.join("scripts/fuzz.sh"))
        .args(["run", &secs])
        .current_dir(&root)
        .output()
        .expect("running scripts/fuzz.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = format!("{stdout}\n{stderr}");
    println!("{text}");
    assert!(out.status.success(), "a fuzz target failed ({}):\n{text}", out.status);
    // Every target ran: a summary row each (the last lines of stdout), with
    // a count of runs.
    let rows: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("--- fuzz summary")).skip(1).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for r in rows {
        let runs: u64 = r.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(runs > 100, "a target that hardly ran: {r}");
    }
}
