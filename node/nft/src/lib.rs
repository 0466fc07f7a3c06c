//! The one place the node runs the `nft` binary. Each component (pod network, Services,
//! NetworkPolicy) owns one `ip` table, renders it as text and swaps it in with one `nft -f -`
//! transaction, so packets see either the old ruleset or the new one, never half of each.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Debian's nftables package and the appliance image both install nft here; a bare `nft` (from
/// PATH) covers other layouts.
const NFT_PATH: &str = "/usr/sbin/nft";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

impl Error {
    /// Whether nft reported a missing table, chain or set.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Failed { stderr, .. } if stderr.contains("No such file or directory"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to run nft: in the caller's network namespace, or inside a named one (`ip netns exec`).
#[derive(Clone, Debug)]
pub struct Nft {
    argv: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        let program = if Path::new(NFT_PATH).exists() {
            NFT_PATH
        } else {
            "nft"
        };
        Nft {
            argv: vec![program.into()],
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
        let mut argv: Vec<String> = ["ip", "netns", "exec", name].map(String::from).to_vec();
        argv.extend(Self::default().argv);
        Nft { argv }
    }

    /// Whether nft runs in the caller's own network namespace.
    pub fn is_local(&self) -> bool {
        self.argv.len() == 1
    }

    /// Runs nft with `args`, feeding `stdin` when given; returns what it printed.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let spawn_err = |source| Error::Spawn {
            program: self.argv.join(" "),
            source,
        };
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(Error::Failed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a ruleset as one transaction (all of it or nothing).
    pub fn apply(&self, text: &str) -> Result<()> {
        self.run(&["-f", "-"], Some(text)).map(|_| ())
    }

    /// Parses and checks a ruleset against the kernel without committing it.
    pub fn check(&self, text: &str) -> Result<()> {
        self.run(&["-c", "-f", "-"], Some(text)).map(|_| ())
    }

    /// Replaces `table ip <table>` with `body` (the table's contents) in one transaction.
    pub fn replace_table(&self, table: &str, body: &str) -> Result<()> {
        self.apply(&replace_table_script(table, body))
    }

    /// Removes `table ip <table>` and everything in it; a no-op when there is none.
    pub fn delete_table(&self, table: &str) -> Result<()> {
        self.apply(&delete_table_script(table))
    }

    /// `table ip <table>` as nft prints it, or None when there is none.
    pub fn list_table(&self, table: &str) -> Result<Option<String>> {
        match self.run(&["list", "table", "ip", table], None) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `table ip <table>` exists (`list tables`: cheap, whatever the table holds).
    pub fn table_exists(&self, table: &str) -> Result<bool> {
        let want = format!("table ip {table}");
        Ok(self
            .run(&["list", "tables"], None)?
            .lines()
            .any(|l| l.trim() == want))
    }

    /// One chain of `table ip <table>` as nft prints it.
    pub fn list_chain(&self, table: &str, chain: &str) -> Result<String> {
        self.run(&["list", "chain", "ip", table, chain], None)
    }

    /// The sets of `table ip <table>` with their elements, without the chains.
    pub fn list_sets(&self, table: &str) -> Result<String> {
        self.run(&["list", "sets", "table", "ip", table], None)
    }
}

/// The transaction that swaps a whole table: declaring the table first makes the delete valid
/// when it does not exist yet.
pub fn replace_table_script(table: &str, body: &str) -> String {
    format!(
        "{}table ip {table} {{\n{body}}}\n",
        delete_table_script(table)
    )
}

/// The transaction that removes a table whether or not it exists.
pub fn delete_table_script(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_declare_before_deleting() {
        assert_eq!(
            delete_table_script("t"),
            "table ip t {}\ndelete table ip t\n"
        );
        assert_eq!(
            replace_table_script("t", "  chain c {\n  }\n"),
            "table ip t {}\ndelete table ip t\ntable ip t {\n  chain c {\n  }\n}\n"
        );
    }

    #[test]
    fn netns_runs_through_ip_netns_exec() {
        let n = Nft::in_netns("ns1");
        assert!(!n.is_local());
        assert_eq!(&n.argv[..4], ["ip", "netns", "exec", "ns1"]);
        assert!(Nft::new().is_local());
    }

    #[test]
    fn not_found_is_recognised() {
        let e = Error::Failed {
            status: "exit status: 1".into(),
            stderr: "Error: No such file or directory; did you mean table 'x' in family ip?".into(),
        };
        assert!(e.is_not_found());
    }
}
