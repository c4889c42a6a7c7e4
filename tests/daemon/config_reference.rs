//! `docs/configuration.md`: its settings table is what `sharevault config-reference` generates
//! from the definitions of `serve`, between its markers, with the prose around it kept.

use sharevault::cli::config_reference::{BEGIN, END, REGENERATE};
use std::process::Command;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");

#[test]
fn the_committed_configuration_reference_is_the_generated_one() {
    let doc = std::fs::read_to_string(COMMITTED)
        .unwrap_or_else(|e| panic!("{COMMITTED}: {e}; regenerate it with `{REGENERATE}`"));
    let out = Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .arg("config-reference")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let expected = format!("{BEGIN}\n\n{table}\n{END}\n");
    assert!(
        doc.contains(&expected),
        "docs/configuration.md does not hold the settings table the code generates (between \
         `{BEGIN}` and `{END}`): regenerate it with `{REGENERATE}`"
    );
    assert_eq!(doc.matches(BEGIN).count(), 1, "one generated region");
    // Every setting of `serve --help` is in the table, by its flag.
    let help = Command::new(env!("CARGO_BIN_EXE_sharevault"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !["--help", "--debug"].contains(w))
    {
        assert!(
            table.contains(&format!("`{flag}")),
            "{flag} is not in the table"
        );
    }
}
