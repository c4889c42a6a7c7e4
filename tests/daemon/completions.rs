//! `sharevault completions bash|zsh|fish`: the scripts the Debian package installs, printed by
//! the binary itself; bash, given the bash one, completes commands, subcommands and flags, and
//! never offers a hidden command.

use std::path::Path;
use std::process::Command;

/// `sharevault completions SHELL`, which must succeed; its stdout.
fn completions(shell: &str) -> String {
    let out = Command::new(crate::harness::binary())
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sharevault completions {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash's completion offers for the words typed so far (the last one being completed),
/// with the script `sharevault completions bash` printed loaded as a user would load it.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let program = r#"
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_sharevault sharevault "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = match Command::new("bash")
        .args(["-c", program, "complete"])
        .arg(script)
        .args(words)
        .output()
    {
        Ok(out) => out,
        Err(err) => panic!("cannot run bash (Debian: apt-get install bash): {err}"),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_are_the_packaged_scripts_and_bash_completes_commands_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let packaged = tmp.path().join("package");
    let out = Command::new(crate::harness::binary())
        .arg("package-files")
        .arg("--out-dir")
        .arg(&packaged)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for (shell, file, first_line) in [
        ("bash", "sharevault.bash", "_sharevault() {"),
        ("zsh", "_sharevault", "#compdef sharevault"),
        ("fish", "sharevault.fish", ""),
    ] {
        let script = completions(shell);
        let installed = std::fs::read_to_string(packaged.join("completions").join(file)).unwrap();
        assert!(
            script == installed,
            "`sharevault completions {shell}` differs from the packaged {file}"
        );
        assert!(script.starts_with(first_line), "{shell}: {script:.200}");
        for word in [
            "check-config",
            "selftest",
            "completions",
            "admin-token-file",
        ] {
            assert!(script.contains(word), "{shell}: {word} is not offered");
        }
        for hidden in ["package-files", "bench-stand-in", "openapi"] {
            assert!(!script.contains(hidden), "{shell}: the hidden {hidden}");
        }
    }
    assert!(completions("fish").contains("complete -c sharevault "));

    let bash = tmp.path().join("sharevault.bash");
    std::fs::write(&bash, completions("bash")).unwrap();
    let commands = bash_completes(&bash, &["sharevault", ""]);
    for command in ["serve", "check-config", "status", "token", "completions"] {
        assert!(commands.iter().any(|c| c == command), "{commands:?}");
    }
    assert!(
        !commands.iter().any(|c| c == "package-files"),
        "{commands:?}"
    );
    assert_eq!(
        bash_completes(&bash, &["sharevault", "che"]),
        ["check-config"]
    );
    let token = bash_completes(&bash, &["sharevault", "token", ""]);
    for sub in ["create", "list", "revoke"] {
        assert!(token.iter().any(|c| c == sub), "{token:?}");
    }
    assert_eq!(
        bash_completes(&bash, &["sharevault", "status", "--con"]),
        ["--connect"]
    );
    assert_eq!(
        bash_completes(&bash, &["sharevault", "completions", "fi"]),
        ["fish"]
    );

    // An unknown shell is refused, naming the ones there are.
    let out = Command::new(crate::harness::binary())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bash") && stderr.contains("fish"),
        "{stderr}"
    );
}
