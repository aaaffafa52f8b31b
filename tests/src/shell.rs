//! Small helpers for talking POSIX sh: quoting words and reading `KEY=value` lines.

use std::collections::BTreeMap;

/// Quotes `word` so that `sh` reads it back as exactly one word with the same bytes.
pub fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Quotes each word and joins them with spaces.
pub fn sh_join<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    words
        .into_iter()
        .map(|w| sh_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `name` is a valid shell variable name.
pub fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses the shell-sourceable `KEY=value` lines that our build scripts print on stdout.
/// Other lines are ignored; a value in matching single or double quotes is unquoted (no
/// escapes: the scripts print paths and versions).
pub fn parse_assignments(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !is_var_name(key) {
            continue;
        }
        let value = value.trim();
        let unquoted = ['\'', '"']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.insert(key.to_string(), unquoted.to_string());
    }
    out
}

/// Fails (for a test) when `text` is not valid POSIX sh (`sh -n`), naming the library, so a
/// quoting slip in a generated script fails on the host, not inside a guest.
pub fn assert_sh_parses(name: &str, text: &str) {
    let out = std::process::Command::new("sh")
        .arg("-n")
        .arg("-c")
        .arg(text)
        .output()
        .expect("run sh -n");
    assert!(
        out.status.success(),
        "{name} library: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("abc/d.e"), "abc/d.e");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
        assert_eq!(sh_join(["a", "b c"]), "a 'b c'");
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let nasty = "a 'b' \"c\" $d `e` \\f\n g";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn assignments() {
        let m = parse_assignments(
            "building...\nBZIMAGE=/c/k/bzImage\nVMLINUX='/c/k/vm linux'\nexport X=\"1\"\n\
             not a line\n1BAD=x\nKERNEL_VERSION=6.12.1\n",
        );
        assert_eq!(m["BZIMAGE"], "/c/k/bzImage");
        assert_eq!(m["VMLINUX"], "/c/k/vm linux");
        assert_eq!(m["X"], "1");
        assert_eq!(m["KERNEL_VERSION"], "6.12.1");
        assert!(!m.contains_key("1BAD"));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn var_names() {
        assert!(is_var_name("SHARE"));
        assert!(is_var_name("_x1"));
        assert!(!is_var_name("1x"));
        assert!(!is_var_name("a-b"));
        assert!(!is_var_name(""));
    }
}
