//! SPDY/3.1 framing (the protocol kubectl's port-forward, and exec before 1.30, speak through
//! moby/spdystream): control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING,
//! GOAWAY, HEADERS, WINDOW_UPDATE) and DATA frames, with name/value header blocks compressed
//! by one zlib stream per direction primed with the SPDY/3 dictionary.
//!
//! Wire layout (all big-endian):
//! - control: `1 | version:15 | type:16 | flags:8 | length:24 | payload`
//! - data:    `0 | stream-id:31 | flags:8 | length:24 | payload`

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

pub const VERSION: u16 = 3;
/// `FLAG_FIN` on SYN_STREAM, SYN_REPLY, HEADERS and DATA: the sender's half is closed.
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SPDY/3.1 initial per-stream and session flow-control window.
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// SETTINGS id of SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// Largest payload accepted in one frame (spdystream's limit is 2^24-1; we stay far below).
const MAX_FRAME: usize = 16 << 20;
/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("invalid {0} frame")]
    Invalid(&'static str),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("header block: {0}")]
    Headers(String),
}

/// Header name/value pairs in wire order (names lowercase; several values of one name are
/// joined by NUL, as on the wire).
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// Entries are (flags, id, value).
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame type this implementation does not know (the spec says: ignore it).
    Unknown {
        kind: u16,
    },
}

/// The value of header `name` (case-insensitive), if present.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn stream_id(b: &[u8]) -> u32 {
    be32(b) & 0x7fff_ffff
}

fn raw_headers(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
        raw.extend_from_slice(k.as_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    raw
}

fn parse_raw_headers(raw: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Headers("truncated name/value block".into());
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = raw.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    let count = be32(take(4)?) as usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = be32(take(4)?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = be32(take(4)?) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// Writes frames; owns the sending direction's header compressor.
pub struct Encoder {
    deflate: Compress,
}

impl Encoder {
    pub fn new() -> Result<Encoder, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .map_err(|e| SpdyError::Headers(e.to_string()))?;
        Ok(Encoder { deflate })
    }

    fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let raw = raw_headers(headers);
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // A sync flush is complete once all input is consumed with output room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let (kind, flags, payload): (u16, u8, Vec<u8>) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&((*flags as u32) << 24 | data.len() as u32).to_be_bytes());
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                p.push((priority & 7) << 5);
                p.push(0);
                p.extend(self.compress(headers)?);
                (SYN_STREAM, *flags, p)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend(self.compress(headers)?);
                (SYN_REPLY, *flags, p)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend(self.compress(headers)?);
                (HEADERS, *flags, p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                (RST_STREAM, 0, p)
            }
            Frame::Settings { flags, entries } => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for (f, id, value) in entries {
                    p.extend_from_slice(&((*f as u32) << 24 | (id & 0xff_ffff)).to_be_bytes());
                    p.extend_from_slice(&value.to_be_bytes());
                }
                (SETTINGS, *flags, p)
            }
            Frame::Ping { id } => (PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last_good, status } => {
                let mut p = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                (GOAWAY, 0, p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                (WINDOW_UPDATE, 0, p)
            }
            Frame::Unknown { kind } => (*kind, 0, Vec::new()),
        };
        if payload.len() > 0xff_ffff {
            return Err(SpdyError::TooLarge(payload.len()));
        }
        out.extend_from_slice(&(0x8000u16 | VERSION).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&((flags as u32) << 24 | payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(())
    }
}

/// Reads frames; owns the receiving direction's header decompressor.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            inflate: Decompress::new(true),
        }
    }
}

impl Decoder {
    fn decompress(&mut self, data: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(data.len() * 4 + 256);
        let mut input = data;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let (before_in, before_out) = (self.inflate.total_in(), out.len());
            let mut primed = false;
            match self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                    primed = true;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
            let consumed = (self.inflate.total_in() - before_in) as usize;
            input = &input[consumed..];
            if input.is_empty() && out.len() < out.capacity() {
                return parse_raw_headers(&out);
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Headers("header block too large".into()));
            }
            if consumed == 0 && out.len() == before_out && !primed && out.len() < out.capacity() {
                return Err(SpdyError::Headers(
                    "compressed block made no progress".into(),
                ));
            }
        }
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` until a whole frame is there,
    /// else the frame and how many bytes it used.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (be32(&buf[4..8]) & 0xff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let flags = buf[4];
        let p = &buf[8..8 + len];
        let used = 8 + len;
        if buf[0] & 0x80 == 0 {
            let frame = Frame::Data {
                stream_id: stream_id(&buf[0..4]),
                flags,
                data: p.to_vec(),
            };
            return Ok(Some((frame, used)));
        }
        let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([buf[2], buf[3]]);
        let need = |n: usize, what: &'static str| {
            if p.len() < n {
                Err(SpdyError::Invalid(what))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id: stream_id(&p[0..4]),
                    associated: stream_id(&p[4..8]),
                    priority: p[8] >> 5,
                    flags,
                    headers: self.decompress(&p[10..])?,
                }
            }
            SYN_REPLY => {
                need(4, "SYN_REPLY")?;
                Frame::SynReply {
                    stream_id: stream_id(&p[0..4]),
                    flags,
                    headers: self.decompress(&p[4..])?,
                }
            }
            HEADERS => {
                need(4, "HEADERS")?;
                Frame::Headers {
                    stream_id: stream_id(&p[0..4]),
                    flags,
                    headers: self.decompress(&p[4..])?,
                }
            }
            RST_STREAM => {
                need(8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: stream_id(&p[0..4]),
                    status: be32(&p[4..8]),
                }
            }
            SETTINGS => {
                need(4, "SETTINGS")?;
                let n = be32(&p[0..4]) as usize;
                if p.len() != 4 + n * 8 {
                    return Err(SpdyError::Invalid("SETTINGS"));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| (e[0], be32(e) & 0xff_ffff, be32(&e[4..8])))
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need(4, "PING")?;
                Frame::Ping { id: be32(p) }
            }
            GOAWAY => {
                need(8, "GOAWAY")?;
                Frame::GoAway {
                    last_good: stream_id(&p[0..4]),
                    status: be32(&p[4..8]),
                }
            }
            WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: stream_id(&p[0..4]),
                    delta: be32(&p[4..8]) & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some((frame, used)))
    }
}

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): 1423 bytes, Adler-32
/// 0xe3c6a7c2. It must be byte-exact or the peer's inflate fails.
#[rustfmt::skip]
pub const DICTIONARY: &[u8] = &[
    0x00, 0x00, 0x00, 0x07, 0x6f, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0x73, 0x00, 0x00, 0x00, 0x04, 0x68,
    0x65, 0x61, 0x64, 0x00, 0x00, 0x00, 0x04, 0x70, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x03, 0x70,
    0x75, 0x74, 0x00, 0x00, 0x00, 0x06, 0x64, 0x65, 0x6c, 0x65, 0x74, 0x65, 0x00, 0x00, 0x00, 0x05,
    0x74, 0x72, 0x61, 0x63, 0x65, 0x00, 0x00, 0x00, 0x06, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x00,
    0x00, 0x00, 0x0e, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,
    0x74, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x6c,
    0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x63, 0x63, 0x65, 0x70,
    0x74, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x73, 0x00, 0x00, 0x00, 0x03, 0x61, 0x67, 0x65, 0x00,
    0x00, 0x00, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x77, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x75, 0x74, 0x68,
    0x6f, 0x72, 0x69, 0x7a, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x61, 0x63,
    0x68, 0x65, 0x2d, 0x63, 0x6f, 0x6e, 0x74, 0x72, 0x6f, 0x6c, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x6f,
    0x6e, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x62, 0x61, 0x73, 0x65, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10,
    0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65,
    0x00, 0x00, 0x00, 0x0e, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x65, 0x6e, 0x67,
    0x74, 0x68, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x6f,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0b, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x6d, 0x64, 0x35, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74,
    0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x74, 0x79, 0x70, 0x65, 0x00, 0x00, 0x00, 0x04, 0x64, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x04, 0x65, 0x74, 0x61, 0x67, 0x00, 0x00, 0x00, 0x06, 0x65, 0x78, 0x70, 0x65, 0x63, 0x74,
    0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x70, 0x69, 0x72, 0x65, 0x73, 0x00, 0x00, 0x00, 0x04, 0x66,
    0x72, 0x6f, 0x6d, 0x00, 0x00, 0x00, 0x04, 0x68, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x08, 0x69,
    0x66, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00, 0x11, 0x69, 0x66, 0x2d, 0x6d, 0x6f,
    0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65, 0x00, 0x00, 0x00, 0x0d,
    0x69, 0x66, 0x2d, 0x6e, 0x6f, 0x6e, 0x65, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x08, 0x69, 0x66, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x13, 0x69, 0x66, 0x2d,
    0x75, 0x6e, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65,
    0x00, 0x00, 0x00, 0x0d, 0x6c, 0x61, 0x73, 0x74, 0x2d, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65,
    0x64, 0x00, 0x00, 0x00, 0x08, 0x6c, 0x6f, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00,
    0x0c, 0x6d, 0x61, 0x78, 0x2d, 0x66, 0x6f, 0x72, 0x77, 0x61, 0x72, 0x64, 0x73, 0x00, 0x00, 0x00,
    0x06, 0x70, 0x72, 0x61, 0x67, 0x6d, 0x61, 0x00, 0x00, 0x00, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00, 0x00,
    0x13, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x61,
    0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x05, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00,
    0x07, 0x72, 0x65, 0x66, 0x65, 0x72, 0x65, 0x72, 0x00, 0x00, 0x00, 0x0b, 0x72, 0x65, 0x74, 0x72,
    0x79, 0x2d, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x06, 0x73, 0x65, 0x72, 0x76, 0x65,
    0x72, 0x00, 0x00, 0x00, 0x02, 0x74, 0x65, 0x00, 0x00, 0x00, 0x07, 0x74, 0x72, 0x61, 0x69, 0x6c,
    0x65, 0x72, 0x00, 0x00, 0x00, 0x11, 0x74, 0x72, 0x61, 0x6e, 0x73, 0x66, 0x65, 0x72, 0x2d, 0x65,
    0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x07, 0x75, 0x70, 0x67, 0x72, 0x61,
    0x64, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x75, 0x73, 0x65, 0x72, 0x2d, 0x61, 0x67, 0x65, 0x6e, 0x74,
    0x00, 0x00, 0x00, 0x04, 0x76, 0x61, 0x72, 0x79, 0x00, 0x00, 0x00, 0x03, 0x76, 0x69, 0x61, 0x00,
    0x00, 0x00, 0x07, 0x77, 0x61, 0x72, 0x6e, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10, 0x77, 0x77,
    0x77, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x06, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x00, 0x00, 0x00, 0x03, 0x67, 0x65, 0x74, 0x00,
    0x00, 0x00, 0x06, 0x73, 0x74, 0x61, 0x74, 0x75, 0x73, 0x00, 0x00, 0x00, 0x06, 0x32, 0x30, 0x30,
    0x20, 0x4f, 0x4b, 0x00, 0x00, 0x00, 0x07, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x00,
    0x00, 0x08, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x31, 0x00, 0x00, 0x00, 0x03, 0x75, 0x72,
    0x6c, 0x00, 0x00, 0x00, 0x06, 0x70, 0x75, 0x62, 0x6c, 0x69, 0x63, 0x00, 0x00, 0x00, 0x0a, 0x73,
    0x65, 0x74, 0x2d, 0x63, 0x6f, 0x6f, 0x6b, 0x69, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x6b, 0x65, 0x65,
    0x70, 0x2d, 0x61, 0x6c, 0x69, 0x76, 0x65, 0x00, 0x00, 0x00, 0x06, 0x6f, 0x72, 0x69, 0x67, 0x69,
    0x6e, 0x31, 0x30, 0x30, 0x31, 0x30, 0x31, 0x32, 0x30, 0x31, 0x32, 0x30, 0x32, 0x32, 0x30, 0x35,
    0x32, 0x30, 0x36, 0x33, 0x30, 0x30, 0x33, 0x30, 0x32, 0x33, 0x30, 0x33, 0x33, 0x30, 0x34, 0x33,
    0x30, 0x35, 0x33, 0x30, 0x36, 0x33, 0x30, 0x37, 0x34, 0x30, 0x32, 0x34, 0x30, 0x35, 0x34, 0x30,
    0x36, 0x34, 0x30, 0x37, 0x34, 0x30, 0x38, 0x34, 0x30, 0x39, 0x34, 0x31, 0x30, 0x34, 0x31, 0x31,
    0x34, 0x31, 0x32, 0x34, 0x31, 0x33, 0x34, 0x31, 0x34, 0x34, 0x31, 0x35, 0x34, 0x31, 0x36, 0x34,
    0x31, 0x37, 0x35, 0x30, 0x32, 0x35, 0x30, 0x34, 0x35, 0x30, 0x35, 0x32, 0x30, 0x33, 0x20, 0x4e,
    0x6f, 0x6e, 0x2d, 0x41, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x74, 0x61, 0x74, 0x69, 0x76, 0x65,
    0x20, 0x49, 0x6e, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x32, 0x30, 0x34, 0x20,
    0x4e, 0x6f, 0x20, 0x43, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x33, 0x30, 0x31, 0x20, 0x4d, 0x6f,
    0x76, 0x65, 0x64, 0x20, 0x50, 0x65, 0x72, 0x6d, 0x61, 0x6e, 0x65, 0x6e, 0x74, 0x6c, 0x79, 0x34,
    0x30, 0x30, 0x20, 0x42, 0x61, 0x64, 0x20, 0x52, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x34, 0x30,
    0x31, 0x20, 0x55, 0x6e, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x65, 0x64, 0x34, 0x30,
    0x33, 0x20, 0x46, 0x6f, 0x72, 0x62, 0x69, 0x64, 0x64, 0x65, 0x6e, 0x34, 0x30, 0x34, 0x20, 0x4e,
    0x6f, 0x74, 0x20, 0x46, 0x6f, 0x75, 0x6e, 0x64, 0x35, 0x30, 0x30, 0x20, 0x49, 0x6e, 0x74, 0x65,
    0x72, 0x6e, 0x61, 0x6c, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72, 0x20, 0x45, 0x72, 0x72, 0x6f,
    0x72, 0x35, 0x30, 0x31, 0x20, 0x4e, 0x6f, 0x74, 0x20, 0x49, 0x6d, 0x70, 0x6c, 0x65, 0x6d, 0x65,
    0x6e, 0x74, 0x65, 0x64, 0x35, 0x30, 0x33, 0x20, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63, 0x65, 0x20,
    0x55, 0x6e, 0x61, 0x76, 0x61, 0x69, 0x6c, 0x61, 0x62, 0x6c, 0x65, 0x4a, 0x61, 0x6e, 0x20, 0x46,
    0x65, 0x62, 0x20, 0x4d, 0x61, 0x72, 0x20, 0x41, 0x70, 0x72, 0x20, 0x4d, 0x61, 0x79, 0x20, 0x4a,
    0x75, 0x6e, 0x20, 0x4a, 0x75, 0x6c, 0x20, 0x41, 0x75, 0x67, 0x20, 0x53, 0x65, 0x70, 0x74, 0x20,
    0x4f, 0x63, 0x74, 0x20, 0x4e, 0x6f, 0x76, 0x20, 0x44, 0x65, 0x63, 0x20, 0x30, 0x30, 0x3a, 0x30,
    0x30, 0x3a, 0x30, 0x30, 0x20, 0x4d, 0x6f, 0x6e, 0x2c, 0x20, 0x54, 0x75, 0x65, 0x2c, 0x20, 0x57,
    0x65, 0x64, 0x2c, 0x20, 0x54, 0x68, 0x75, 0x2c, 0x20, 0x46, 0x72, 0x69, 0x2c, 0x20, 0x53, 0x61,
    0x74, 0x2c, 0x20, 0x53, 0x75, 0x6e, 0x2c, 0x20, 0x47, 0x4d, 0x54, 0x63, 0x68, 0x75, 0x6e, 0x6b,
    0x65, 0x64, 0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x68, 0x74, 0x6d, 0x6c, 0x2c, 0x69, 0x6d, 0x61,
    0x67, 0x65, 0x2f, 0x70, 0x6e, 0x67, 0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x6a, 0x70, 0x67,
    0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x67, 0x69, 0x66, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x6d, 0x6c, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x68, 0x74, 0x6d, 0x6c, 0x2b, 0x78, 0x6d, 0x6c,
    0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x70, 0x6c, 0x61, 0x69, 0x6e, 0x2c, 0x74, 0x65, 0x78, 0x74,
    0x2f, 0x6a, 0x61, 0x76, 0x61, 0x73, 0x63, 0x72, 0x69, 0x70, 0x74, 0x2c, 0x70, 0x75, 0x62, 0x6c,
    0x69, 0x63, 0x70, 0x72, 0x69, 0x76, 0x61, 0x74, 0x65, 0x6d, 0x61, 0x78, 0x2d, 0x61, 0x67, 0x65,
    0x3d, 0x67, 0x7a, 0x69, 0x70, 0x2c, 0x64, 0x65, 0x66, 0x6c, 0x61, 0x74, 0x65, 0x2c, 0x73, 0x64,
    0x63, 0x68, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x75, 0x74, 0x66, 0x2d, 0x38, 0x63,
    0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x69, 0x73, 0x6f, 0x2d, 0x38, 0x38, 0x35, 0x39, 0x2d,
    0x31, 0x2c, 0x75, 0x74, 0x66, 0x2d, 0x2c, 0x2a, 0x2c, 0x65, 0x6e, 0x71, 0x3d, 0x30, 0x2e,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        let mut d = Compress::new(Compression::default(), true);
        assert_eq!(d.set_dictionary(DICTIONARY).unwrap(), 0xe3c6_a7c2);
    }

    /// Two SYN_STREAMs as kubectl sends them (error then data stream of one forwarded
    /// connection), compressed by another zlib (level 9, as Go's framer) sharing one stream.
    #[test]
    fn decodes_foreign_syn_streams() {
        let wire = hex("800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff800300010000001800000003000000000000c2aa19540e2512d60b000000ffff");
        let mut d = Decoder::default();
        let (f1, n1) = d.decode(&wire).unwrap().unwrap();
        assert_eq!(
            f1,
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0")
                ]),
            }
        );
        // A partial frame waits for more bytes.
        assert!(d.decode(&wire[n1..wire.len() - 1]).unwrap().is_none());
        let (f2, n2) = d.decode(&wire[n1..]).unwrap().unwrap();
        assert_eq!(n1 + n2, wire.len());
        let Frame::SynStream {
            stream_id, headers, ..
        } = f2
        else {
            panic!("{f2:?}")
        };
        assert_eq!(stream_id, 3);
        assert_eq!(header(&headers, "streamType"), Some("data"));
        assert_eq!(header(&headers, "requestID"), Some("0"));
    }

    #[test]
    fn decodes_hand_built_control_and_data_frames() {
        let mut d = Decoder::default();
        let ping = hex("800300060000000400000007");
        assert_eq!(d.decode(&ping).unwrap(), Some((Frame::Ping { id: 7 }, 12)));
        let wu = hex("80030009000000080000000500001000");
        assert_eq!(
            d.decode(&wu).unwrap().unwrap().0,
            Frame::WindowUpdate {
                stream_id: 5,
                delta: 4096
            }
        );
        let rst = hex("80030003000000080000000300000005");
        assert_eq!(
            d.decode(&rst).unwrap().unwrap().0,
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL
            }
        );
        let settings = hex("800300040000000c000000010000000700020000");
        assert_eq!(
            d.decode(&settings).unwrap().unwrap().0,
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 0x20000)]
            }
        );
        let goaway = hex("80030007000000080000000300000000");
        assert_eq!(
            d.decode(&goaway).unwrap().unwrap().0,
            Frame::GoAway {
                last_good: 3,
                status: 0
            }
        );
        let data = hex("000000030100000268690000");
        assert_eq!(
            d.decode(&data).unwrap(),
            Some((
                Frame::Data {
                    stream_id: 3,
                    flags: FLAG_FIN,
                    data: b"hi".to_vec()
                },
                10
            ))
        );
        assert!(d.decode(&data[..7]).unwrap().is_none());
        assert!(matches!(
            d.decode(&hex("800200060000000400000007")),
            Err(SpdyError::Version(2))
        ));
        assert!(matches!(
            d.decode(&hex("800300060000000200000007")),
            Err(SpdyError::Invalid("PING"))
        ));
    }

    #[test]
    fn round_trips_every_frame_type() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::Headers {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: h(&[("x", "a\0b")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: h(&[("streamtype", "data"), ("port", "80")]),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_REFUSED_STREAM,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![(1, 4, 100), (0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good: 7,
                status: 1,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 65536,
            },
            Frame::Data {
                stream_id: 5,
                flags: 0,
                data: vec![7u8; 70_000],
            },
            Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: Vec::new(),
            },
        ];
        let mut e = Encoder::new().unwrap();
        let mut wire = Vec::new();
        for f in &frames {
            e.encode(f, &mut wire).unwrap();
        }
        // The first header block declares the SPDY dictionary in its zlib header.
        assert_eq!(&wire[18..20], &[0x78, 0xbb]);
        assert_eq!(&wire[20..24], &0xe3c6_a7c2u32.to_be_bytes());
        let mut d = Decoder::default();
        let mut pos = 0;
        let mut got = Vec::new();
        // Feed in awkward slices to exercise partial frames.
        while pos < wire.len() {
            match d.decode(&wire[pos..]).unwrap() {
                Some((f, n)) => {
                    got.push(f);
                    pos += n;
                }
                None => panic!("stuck at {pos}"),
            }
        }
        assert_eq!(got, frames);
    }
}
