//! The byte protocol between the node daemon and a shim for `kubectl attach` (over the shim's
//! `attach.sock`) and for `kubectl exec -t` (over the exec shim's stdin): length-prefixed
//! frames, `[kind: u8][length: u32 big-endian][payload]`.
//!
//! Daemon → shim: `Hello` (first, says whether this session sends stdin), `Stdin` data,
//! `CloseStdin`, `Resize`. Shim → daemon: `Stdout`, `Stderr`. The shim closes the connection
//! when the container has exited and its output is drained.

/// The largest payload accepted; larger frames are a protocol error.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HEADER: usize = 5;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const CLOSE_STDIN: u8 = 3;
const RESIZE: u8 = 4;
const HELLO: u8 = 5;

/// One message of the attach protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a session; `stdin` says whether it will write to the container's stdin (only such
    /// sessions close it with `stdinOnce`).
    Hello {
        stdin: bool,
    },
    Stdin(Vec<u8>),
    /// The session's stdin ended.
    CloseStdin,
    /// The terminal's size in columns and rows (TIOCSWINSZ).
    Resize {
        width: u16,
        height: u16,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown attach frame kind {0}")]
    UnknownKind(u8),
    #[error("attach frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("malformed attach frame of kind {0}")]
    Malformed(u8),
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Hello { stdin } => (HELLO, if *stdin { &[1] } else { &[0] }),
            Frame::Stdin(d) => (STDIN, d),
            Frame::CloseStdin => (CLOSE_STDIN, &[]),
            Frame::Resize { width, height } => {
                let mut v = Vec::with_capacity(HEADER + 4);
                v.push(RESIZE);
                v.extend_from_slice(&4u32.to_be_bytes());
                v.extend_from_slice(&width.to_be_bytes());
                v.extend_from_slice(&height.to_be_bytes());
                return v;
            }
            Frame::Stdout(d) => (STDOUT, d),
            Frame::Stderr(d) => (STDERR, d),
        };
        let mut v = Vec::with_capacity(HEADER + payload.len());
        v.push(kind);
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Decodes one frame from the start of `buf`: `Ok(None)` until it is complete, else the
    /// frame and the number of bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let p = &buf[HEADER..HEADER + len];
        let frame = match kind {
            HELLO => Frame::Hello {
                stdin: p.first() == Some(&1),
            },
            STDIN => Frame::Stdin(p.to_vec()),
            CLOSE_STDIN => Frame::CloseStdin,
            RESIZE => {
                if p.len() != 4 {
                    return Err(FrameError::Malformed(kind));
                }
                Frame::Resize {
                    width: u16::from_be_bytes([p[0], p[1]]),
                    height: u16::from_be_bytes([p[2], p[3]]),
                }
            }
            STDOUT => Frame::Stdout(p.to_vec()),
            STDERR => Frame::Stderr(p.to_vec()),
            k => return Err(FrameError::UnknownKind(k)),
        };
        Ok(Some((frame, HEADER + len)))
    }
}

/// Decodes every complete frame buffered in `buf`, leaving a partial one in place.
pub fn drain_frames(buf: &mut Vec<u8>) -> Result<Vec<Frame>, FrameError> {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some((f, n)) = Frame::decode(&buf[used..])? {
        out.push(f);
        used += n;
    }
    buf.drain(..used);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello { stdin: true },
            Frame::Hello { stdin: false },
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::CloseStdin,
            Frame::Resize {
                width: 132,
                height: 43,
            },
            Frame::Stdout(vec![0xff; 70_000]),
            Frame::Stderr(b"oops".to_vec()),
        ];
        let mut wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        // Byte by byte: nothing decodes before a frame is complete.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire.drain(..) {
            buf.push(b);
            got.extend(drain_frames(&mut buf).unwrap());
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    #[test]
    fn resize_layout_and_errors() {
        assert_eq!(
            Frame::Resize {
                width: 0x0102,
                height: 0x0304
            }
            .encode(),
            vec![4, 0, 0, 0, 4, 1, 2, 3, 4]
        );
        assert_eq!(
            Frame::decode(&[4, 0, 0, 0, 1, 9]),
            Err(FrameError::Malformed(4))
        );
        assert_eq!(
            Frame::decode(&[9, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(9))
        );
        assert_eq!(
            Frame::decode(&[0, 0xff, 0, 0, 0]),
            Err(FrameError::TooLarge(0xff00_0000))
        );
        assert_eq!(Frame::decode(&[1, 0, 0, 0, 3, b'a']), Ok(None));
    }
}
