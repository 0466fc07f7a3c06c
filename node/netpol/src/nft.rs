//! Swapping a whole table in with the `nft` binary, as one transaction.

use crate::Error;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The nft binary (Debian's nftables package; the appliance image ships it too).
pub const NFT: &str = "nft";

/// Replaces `table ip <name>` with `body` (the table's contents) atomically: creating it first
/// makes the delete valid on the first run, and nft applies the file as one transaction, so
/// packets see either the old ruleset or the new one.
pub async fn replace_table(name: &str, body: &str) -> Result<(), Error> {
    let script =
        format!("table ip {name} {{}}\ndelete table ip {name}\ntable ip {name} {{\n{body}}}\n");
    run_script(&script).await
}

/// Deletes the table if it exists.
pub async fn delete_table(name: &str) -> Result<(), Error> {
    run_script(&format!("table ip {name} {{}}\ndelete table ip {name}\n")).await
}

async fn run_script(script: &str) -> Result<(), Error> {
    let spawn_err = |source| Error::Spawn {
        program: NFT.into(),
        source,
    };
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
