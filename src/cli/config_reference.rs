//! The settings table of `docs/configuration.md`, generated from the definitions of
//! `sharevault serve` ([`ServeArgs`]): each setting's flag, file key, environment variable,
//! default and help come from its `#[arg]` and its doc comment, whose `[default: X]` is the one
//! place its documented default is written. `sharevault config-reference` prints the table;
//! `sharevault config-reference --write docs/configuration.md` puts it between the file's
//! markers, leaving the prose around it alone. A test fails when the committed file drifts.

use crate::config::ServeArgs;

/// The line that opens the generated table in `docs/configuration.md`.
pub const BEGIN: &str = "<!-- generated: sharevault config-reference -->";
/// The line that closes it.
pub const END: &str = "<!-- end -->";
/// The command that regenerates the committed file.
pub const REGENERATE: &str = "cargo run -- config-reference --write docs/configuration.md";

/// One setting of `serve`, as the reference shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The clap id, which is also the field of [`ServeArgs`].
    pub id: String,
    /// `--flag VALUE`, `--flag [BOOL]`, `--flag a|b` or `--flag`.
    pub flag: String,
    /// The TOML key, or `None` for a flag that is never read from the file.
    pub file_key: Option<String>,
    /// The environment variable, if any.
    pub env: Option<String>,
    /// The text of `[default: X]` in the doc comment.
    pub default: String,
    /// The doc comment without its `[default: X]`, on one line.
    pub help: String,
}

/// The `serve` command as clap sees it.
pub fn serve_command() -> clap::Command {
    use clap::Args;
    ServeArgs::augment_args(clap::Command::new("serve"))
}

/// Every setting of `serve`, in the order of their definitions. Fails when a doc comment
/// lacks its `[default: X]`.
pub fn settings() -> Result<Vec<Setting>, String> {
    let command = serve_command();
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str().to_owned();
        if id == "help" || id == "version" {
            continue;
        }
        let doc = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (help, default) = split_default(&doc)
            .ok_or_else(|| format!("--{id}: its doc comment has no `[default: X]`"))?;
        let long = arg
            .get_long()
            .ok_or_else(|| format!("{id}: not a --flag"))?;
        out.push(Setting {
            flag: flag(arg, long),
            file_key: is_file_key(&id).then(|| id.clone()),
            env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            default,
            help,
            id,
        });
    }
    Ok(out)
}

/// `--name` with what it takes: its possible values, its value name, or nothing.
fn flag(arg: &clap::Arg, long: &str) -> String {
    let takes_value = arg.get_action().takes_values();
    if !takes_value {
        return format!("--{long}");
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_owned())
        .collect();
    let value = if values.is_empty() {
        arg.get_value_names()
            .and_then(|names| names.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| "VALUE".to_owned())
    } else {
        values.join("|")
    };
    let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    if optional {
        format!("--{long} [{value}]")
    } else {
        format!("--{long} {value}")
    }
}

/// Whether `key` is read from the config file: the file refuses unknown keys, and a known key
/// given a wrong value fails on its value instead.
fn is_file_key(key: &str) -> bool {
    match toml::from_str::<ServeArgs>(&format!("{key} = []")) {
        Ok(_) => true,
        Err(err) => !err.to_string().contains("unknown field"),
    }
}

/// Splits `[default: X]` off a doc comment: the rest on one line, and X.
fn split_default(doc: &str) -> Option<(String, String)> {
    let doc = one_line(doc);
    let start = doc.find("[default: ")?;
    let inner = &doc[start + "[default: ".len()..];
    let mut depth = 0usize;
    let end = inner.char_indices().find_map(|(i, c)| match c {
        '[' => {
            depth += 1;
            None
        }
        ']' if depth == 0 => Some(i),
        ']' => {
            depth -= 1;
            None
        }
        _ => None,
    })?;
    let default = inner[..end].trim().to_owned();
    let before = doc[..start].trim_end();
    let after = inner[end + 1..].trim_start();
    let help = match after.chars().next() {
        None => before.to_owned(),
        Some('.' | ',' | ';' | ':' | ')') => format!("{before}{after}"),
        Some(_) => format!("{before} {after}"),
    };
    Some((help, default))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A default as a cell: a value in backticks, words as they are.
fn default(value: &str) -> String {
    let words = ["none", "any", "off"];
    if value.contains(char::is_whitespace) || value.contains('`') || words.contains(&value) {
        value.to_owned()
    } else {
        format!("`{value}`")
    }
}

/// A markdown table cell: pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The generated table, markers excluded.
pub fn table() -> Result<String, String> {
    let mut out = String::from(
        "| flag | file key | environment | default | meaning |\n\
         |------|----------|-------------|---------|---------|\n",
    );
    for s in settings()? {
        let file_key = match &s.file_key {
            Some(key) => format!("`{key}`"),
            None => "(flag only)".to_owned(),
        };
        let env = match &s.env {
            Some(env) => format!("`{env}`"),
            None => "(none)".to_owned(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            cell(&s.flag),
            file_key,
            env,
            cell(&default(&s.default)),
            cell(&s.help)
        ));
    }
    Ok(out)
}

/// `doc` with the region between [`BEGIN`] and [`END`] replaced by the generated table.
pub fn splice(doc: &str) -> Result<String, String> {
    let begin = doc
        .find(BEGIN)
        .ok_or_else(|| format!("no `{BEGIN}` line"))?;
    let body = begin + BEGIN.len();
    let end = doc[body..]
        .find(END)
        .map(|at| body + at)
        .ok_or_else(|| format!("no `{END}` line after `{BEGIN}`"))?;
    Ok(format!("{}\n\n{}\n{}", &doc[..body], table()?, &doc[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::FromArgMatches;

    fn load(argv: &[&str]) -> Result<Config, String> {
        let matches = serve_command()
            .try_get_matches_from(argv)
            .map_err(|e| e.to_string())?;
        let args = ServeArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        Config::load(&args)
    }

    #[test]
    fn every_setting_documents_its_default() {
        let settings = settings().unwrap();
        assert!(settings.len() > 40, "{settings:?}");
        let config = settings.iter().find(|s| s.id == "config").unwrap();
        assert_eq!(config.file_key, None, "`config` is not read from the file");
        let init = settings.iter().find(|s| s.id == "init").unwrap();
        assert_eq!((init.flag.as_str(), &init.file_key), ("--init", &None));
        let data_dir = settings.iter().find(|s| s.id == "data_dir").unwrap();
        assert_eq!(data_dir.file_key.as_deref(), Some("data_dir"));
        assert_eq!(data_dir.env.as_deref(), Some("SHAREVAULT_DATA_DIR"));
        assert_eq!(data_dir.default, "./sharevault-data");
        for s in &settings {
            assert!(!s.help.contains("[default"), "{s:?}");
        }
    }

    /// Where a documented default is a value the flag takes, passing it changes nothing: the
    /// table's defaults are the ones `Config::load` applies.
    #[test]
    fn the_documented_defaults_are_the_defaults_applied() {
        let defaults = load(&["serve"]).unwrap();
        let mut checked = 0;
        for s in settings().unwrap() {
            // "0, keep all" is the value 0; "none", "the systemd credential ..." are words;
            // "ignored" is a deprecated setting's.
            let value = s.default.split(',').next().unwrap_or(&s.default).trim();
            let words = ["none", "any", "off", "ignored"];
            if words.contains(&value) || value.contains(char::is_whitespace) {
                continue;
            }
            let long = format!("--{}", s.id.replace('_', "-"));
            let given = load(&["serve", &long, value])
                .unwrap_or_else(|e| panic!("--{}: documented default {value}: {e}", s.id));
            assert_eq!(given, defaults, "--{}: documented default {value}", s.id);
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} defaults could be checked");
    }

    #[test]
    fn splice_replaces_only_the_generated_region() {
        let doc = format!("# title\n\nprose\n\n{BEGIN}\nold table\n{END}\n\nmore prose\n");
        let spliced = splice(&doc).unwrap();
        assert!(spliced.starts_with(&format!("# title\n\nprose\n\n{BEGIN}\n\n| flag |")));
        assert!(spliced.ends_with(&format!("|\n\n{END}\n\nmore prose\n")));
        assert!(!spliced.contains("old table"));
        assert_eq!(splice(&spliced).unwrap(), spliced);
        assert!(splice("no markers").is_err());
    }

    #[test]
    fn a_default_is_split_off_wherever_it_sits() {
        let (help, default) = split_default("Memory, in bytes [default: 4]. More\ntext.").unwrap();
        assert_eq!(
            (help.as_str(), default.as_str()),
            ("Memory, in bytes. More text.", "4")
        );
        let (help, default) = split_default("A [default: x / 16, so [b]] c").unwrap();
        assert_eq!((help.as_str(), default.as_str()), ("A c", "x / 16, so [b]"));
        assert_eq!(split_default("no default"), None);
    }
}
