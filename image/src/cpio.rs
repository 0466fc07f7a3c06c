//! A reproducible `newc` cpio writer: entries sorted by path, parents first, fixed mtime,
//! root ownership, sequential inode numbers.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An archive being assembled; paths are relative (`init`, `lib/modules/...`).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds an entry and every missing parent directory (mode 0755).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(path, entry);
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// The archive as `newc` bytes with every mtime set to `mtime`.
    pub fn to_newc(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, e)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir { mode } => (0o040000 | mode, &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (0o020000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
            header(
                &mut out,
                ino,
                mode,
                nlink,
                mtime,
                data.len() as u32,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!");
        // Pad to 512 like cpio(1) does.
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_sorted_with_parents() {
        let mut a = Archive::default();
        a.add(
            "/sbin/tool",
            Entry::File {
                mode: 0o755,
                data: b"abc".to_vec(),
            },
        );
        a.add(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        let names: Vec<_> = a.entries().map(|(p, _)| p.clone()).collect();
        assert_eq!(names, vec!["dev", "dev/console", "sbin", "sbin/tool"]);
        let bytes = a.to_newc(1_700_000_000);
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 512, 0);
        let s = String::from_utf8_lossy(&bytes);
        assert!(s.contains("sbin/tool\0"));
        assert!(s.contains("TRAILER!!!"));
        assert_eq!(a.to_newc(1), a.clone().to_newc(1));
    }
}
