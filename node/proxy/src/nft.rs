//! Runs the `nft` binary: a ruleset is applied as one `nft -f -` transaction.

use crate::render::{cleanup_text, TABLE};
use crate::Error;
use std::io::Write;
use std::process::{Command, Stdio};

/// How to run nft: on the host, or inside a named network namespace (`ip netns exec`).
#[derive(Clone, Debug)]
pub struct Nft {
    argv: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            argv: vec!["nft".into()],
        }
    }
}

impl Nft {
    /// nft in the caller's network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// nft inside the network namespace `/run/netns/<name>`.
    pub fn in_netns(name: &str) -> Self {
        Nft {
            argv: ["ip", "netns", "exec", name, "nft"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Whether nft runs in the caller's own network namespace.
    pub fn is_local(&self) -> bool {
        self.argv.len() == 1
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(Error::Spawn)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(Error::Spawn)?;
        }
        let out = child.wait_with_output().map_err(Error::Spawn)?;
        if !out.status.success() {
            return Err(Error::Nft {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a ruleset as one transaction (all of it or nothing).
    pub fn apply(&self, text: &str) -> Result<(), Error> {
        self.run(&["-f", "-"], Some(text)).map(|_| ())
    }

    /// Parses and checks a ruleset against the kernel without committing it.
    pub fn check(&self, text: &str) -> Result<(), Error> {
        self.run(&["-c", "-f", "-"], Some(text)).map(|_| ())
    }

    /// The table as nft prints it, or None when there is none.
    pub fn list_table(&self) -> Result<Option<String>, Error> {
        match self.run(&["list", "table", "ip", TABLE], None) {
            Ok(s) => Ok(Some(s)),
            Err(Error::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the table exists (`list tables`: cheap, whatever the table holds).
    pub fn table_exists(&self) -> Result<bool, Error> {
        let want = format!("table ip {TABLE}");
        Ok(self
            .run(&["list", "tables"], None)?
            .lines()
            .any(|l| l.trim() == want))
    }

    /// One chain of the table as nft prints it.
    pub fn list_chain(&self, chain: &str) -> Result<String, Error> {
        self.run(&["list", "chain", "ip", TABLE, chain], None)
    }

    /// Removes the table and every rule in it (a no-op when it does not exist).
    pub fn cleanup(&self) -> Result<(), Error> {
        self.apply(&cleanup_text())
    }
}

/// `2h59m59s984ms` → duration (nft's time format: d, h, m, s, ms).
pub fn parse_nft_duration(s: &str) -> Option<std::time::Duration> {
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit_ms = match c {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1000,
            _ => return None,
        };
        total_ms += n * unit_ms;
        any = true;
    }
    (any && num.is_empty()).then(|| std::time::Duration::from_millis(total_ms))
}

/// The (address, time left) entries of `set <name> { ... elements = { ... } }` blocks in nft's
/// listing output, by set name.
pub fn parse_set_entries(
    listing: &str,
) -> std::collections::BTreeMap<String, Vec<(std::net::Ipv4Addr, std::time::Duration)>> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = listing;
    while let Some(i) = rest.find("set ") {
        rest = &rest[i + 4..];
        let Some((name, body)) = rest.split_once(" {") else {
            break;
        };
        let name = name.trim().to_string();
        let end = body
            .find("\n\t}")
            .or_else(|| body.find('}'))
            .unwrap_or(body.len());
        let block = &body[..end];
        let mut entries = Vec::new();
        if let Some((_, elems)) = block.split_once("elements = {") {
            let elems = elems.split('}').next().unwrap_or("");
            for e in elems.split(',') {
                let toks: Vec<&str> = e.split_whitespace().collect();
                let Some(ip) = toks.first().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let left = toks
                    .iter()
                    .position(|t| *t == "expires")
                    .and_then(|p| toks.get(p + 1))
                    .and_then(|d| parse_nft_duration(d));
                if let Some(left) = left {
                    entries.push((ip, left));
                }
            }
        }
        out.insert(name, entries);
        rest = &body[end..];
    }
    out
}

impl Nft {
    /// The live entries of the named sets of the table, read with one nft call (`list sets`,
    /// which prints the sets with their elements but none of the chains).
    pub fn set_entries(
        &self,
        sets: &[&str],
    ) -> Result<
        std::collections::BTreeMap<String, Vec<(std::net::Ipv4Addr, std::time::Duration)>>,
        Error,
    > {
        if sets.is_empty() {
            return Ok(Default::default());
        }
        let mut all = parse_set_entries(&self.run(&["list", "sets", "table", "ip", TABLE], None)?);
        all.retain(|name, _| sets.contains(&name.as_str()));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_and_set_listings_parse() {
        assert_eq!(
            parse_nft_duration("2h59m59s984ms"),
            Some(Duration::from_millis(10_799_984))
        );
        assert_eq!(parse_nft_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_nft_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_nft_duration("x"), None);
        let listing = "table ip k3rs {\n\tset aff-1 {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t\telements = { 10.42.3.2 expires 2h59m, 10.42.3.3 timeout 1h expires 10s }\n\t}\n}\ntable ip k3rs {\n\tset aff-2 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t}\n}\n";
        let e = parse_set_entries(listing);
        assert_eq!(
            e["aff-1"],
            vec![
                ("10.42.3.2".parse().unwrap(), Duration::from_secs(10_740)),
                ("10.42.3.3".parse().unwrap(), Duration::from_secs(10)),
            ]
        );
        assert!(e["aff-2"].is_empty());
    }
}
