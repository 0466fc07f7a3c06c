//! Writer for the CRI container log format: `<RFC3339Nano> <stream> <F|P> <content>\n`.

use std::io::{self, Write};

/// Lines longer than this are split into partial (`P`) records, like containerd (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// The stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits each stream's bytes into lines and writes one CRI record per line.
pub struct CriLogWriter<W: Write> {
    out: W,
    pending: [Vec<u8>; 2],
    now: fn() -> String,
}

fn rfc3339_nano_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl<W: Write> CriLogWriter<W> {
    pub fn new(out: W) -> Self {
        Self::with_clock(out, rfc3339_nano_now)
    }

    /// A writer with a fixed clock, for tests.
    pub fn with_clock(out: W, now: fn() -> String) -> Self {
        CriLogWriter {
            out,
            pending: [Vec::new(), Vec::new()],
            now,
        }
    }

    /// Feeds bytes read from `stream`; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.pending[idx].extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    self.emit(stream, true)?;
                }
                None => {
                    self.pending[idx].extend_from_slice(data);
                    data = &[];
                }
            }
            while self.pending[idx].len() >= MAX_LINE {
                let rest = self.pending[idx].split_off(MAX_LINE);
                self.emit(stream, false)?;
                self.pending[idx] = rest;
            }
        }
        self.out.flush()
    }

    /// Writes what is left of a stream that reached EOF (a last line without newline).
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        if !self.pending[stream as usize].is_empty() {
            self.emit(stream, true)?;
        }
        self.out.flush()
    }

    fn emit(&mut self, stream: Stream, full: bool) -> io::Result<()> {
        let idx = stream as usize;
        let mut rec = Vec::with_capacity(self.pending[idx].len() + 48);
        rec.extend_from_slice((self.now)().as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_str().as_bytes());
        rec.extend_from_slice(if full { b" F " } else { b" P " });
        rec.append(&mut self.pending[idx]);
        rec.push(b'\n');
        self.out.write_all(&rec)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> String {
        "2024-01-01T00:00:00.000000001Z".into()
    }

    #[test]
    fn lines_partial_and_eof() {
        let mut w = CriLogWriter::with_clock(Vec::new(), clock);
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"ld\n\nlast").unwrap();
        w.finish(Stream::Stdout).unwrap();
        let out = String::from_utf8(w.into_inner()).unwrap();
        assert_eq!(
            out,
            "2024-01-01T00:00:00.000000001Z stdout F hello\n\
             2024-01-01T00:00:00.000000001Z stderr F err\n\
             2024-01-01T00:00:00.000000001Z stdout F world\n\
             2024-01-01T00:00:00.000000001Z stdout F \n\
             2024-01-01T00:00:00.000000001Z stdout F last\n"
        );
    }

    #[test]
    fn long_lines_are_split() {
        let mut w = CriLogWriter::with_clock(Vec::new(), clock);
        let long = vec![b'x'; MAX_LINE + 10];
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        let out = String::from_utf8(w.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(" stdout P "));
        assert!(lines[1].ends_with(" stdout F xxxxxxxxxx"));
    }
}
