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

    /// One chain of the table as nft prints it.
    pub fn list_chain(&self, chain: &str) -> Result<String, Error> {
        self.run(&["list", "chain", "ip", TABLE, chain], None)
    }

    /// Removes the table and every rule in it (a no-op when it does not exist).
    pub fn cleanup(&self) -> Result<(), Error> {
        self.apply(&cleanup_text())
    }
}
