//! SPDY/3.1 framing, as much of it as Kubernetes' streaming protocols use
//! (client-go speaks it through Docker's spdystream): streams opened by
//! the client with SYN_STREAM and a header block, answered with
//! SYN_REPLY, data frames with a FIN flag for each side's end, RST_STREAM,
//! PING (echoed) and GOAWAY. Flow control (WINDOW_UPDATE, SETTINGS) is
//! ignored, as spdystream ignores it. Header blocks are zlib-compressed
//! with the protocol's preset dictionary, one compression context per
//! direction for the whole connection.
//!
//! The frames travel either over an upgraded HTTP/1.1 connection
//! (`Upgrade: SPDY/3.1`) or tunnelled in WebSocket binary messages
//! (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.35 tries first).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The protocol version in every control frame.
const VERSION: u16 = 3;
/// Control frame types.
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
/// The flag ending a side of a stream.
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: PROTOCOL_ERROR, REFUSED_STREAM, CANCEL.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;
/// The largest control frame accepted (header blocks of the streaming
/// protocols are a few dozen bytes).
const MAX_CONTROL: usize = 64 * 1024;
/// The largest header block accepted, decompressed.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// A frame read from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new stream with its headers (names in lower case).
    SynStream {
        id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    /// Bytes on a stream; `fin`: the client sends nothing more on it.
    Data { id: u32, fin: bool, data: Bytes },
    /// The client abandoned a stream.
    RstStream { id: u32 },
    /// To be echoed.
    Ping { id: u32 },
    /// The client is going away.
    GoAway,
    /// Anything else (SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY...):
    /// read (a header block still goes through the decompressor) and
    /// ignored.
    Ignored,
}

/// A protocol error: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// SPDY/3's header compression dictionary: header names and common
/// values, each with its 32-bit length before it, then a run of common
/// text (the SPDY/3 draft, section 2.6.10.1).
fn dictionary() -> &'static [u8] {
    static DICTIONARY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TEXT: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414",
            "415416417502504505203 Non-Authoritative Information204 No Content301 ",
            "Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not ",
            "Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, ",
            "Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,",
            "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,",
            "utf-,*,enq=0.",
        );
        let mut out = Vec::with_capacity(1423);
        for word in WORDS {
            out.extend_from_slice(&(word.len() as u32).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(TEXT.as_bytes());
        out
    })
}

/// Reads frames from the bytes the client sends, in whatever pieces they
/// come.
pub struct Reader {
    buf: BytesMut,
    inflate: Decompress,
}

impl Default for Reader {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            inflate: Decompress::new(true),
        }
    }
}

impl Reader {
    /// More bytes from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    ///
    /// # Errors
    /// A frame SPDY/3 does not allow, or a header block that does not
    /// decompress.
    pub fn next(&mut self) -> Result<Option<Frame>, Error> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let first = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let flags = self.buf[4];
        let length = usize::from(self.buf[5]) << 16
            | usize::from(self.buf[6]) << 8
            | usize::from(self.buf[7]);
        if first & 0x8000_0000 != 0 && length > MAX_CONTROL {
            return Err(Error(format!(
                "a control frame of {length} bytes (at most {MAX_CONTROL} are accepted)"
            )));
        }
        if self.buf.len() < 8 + length {
            return Ok(None);
        }
        self.buf.advance(8);
        let mut body = self.buf.split_to(length).freeze();
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                id: first & 0x7fff_ffff,
                fin,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error(format!(
                "SPDY version {version} is not spoken here (3 is)"
            )));
        }
        let short = || Error("a control frame shorter than its type needs".into());
        let frame = match (first & 0xffff) as u16 {
            SYN_STREAM => {
                if body.len() < 10 {
                    return Err(short());
                }
                let id = body.get_u32() & 0x7fff_ffff;
                body.advance(6); // associated stream, priority, slot
                let headers = self.header_block(&body)?;
                Frame::SynStream { id, fin, headers }
            }
            SYN_REPLY | HEADERS => {
                if body.len() < 4 {
                    return Err(short());
                }
                body.advance(4);
                // Kept in step with the client's compressor.
                self.header_block(&body)?;
                Frame::Ignored
            }
            RST_STREAM => {
                if body.len() < 8 {
                    return Err(short());
                }
                Frame::RstStream {
                    id: body.get_u32() & 0x7fff_ffff,
                }
            }
            PING => {
                if body.len() < 4 {
                    return Err(short());
                }
                Frame::Ping { id: body.get_u32() }
            }
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }

    /// Decompresses and parses one header block.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let bad = |what: &str| Error(format!("a header block {what}"));
        let mut plain = Vec::with_capacity((compressed.len() * 4 + 64).min(MAX_HEADER_BLOCK));
        let mut at = 0;
        loop {
            if plain.len() == plain.capacity() {
                plain.reserve(4096);
            }
            let (read, written) = (self.inflate.total_in(), plain.len());
            let result =
                self.inflate
                    .decompress_vec(&compressed[at..], &mut plain, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - read) as usize;
            at += consumed;
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| bad(&format!("wants another dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(bad(&format!("does not decompress: {e}"))),
            }
            if plain.len() > MAX_HEADER_BLOCK {
                return Err(bad("is too large"));
            }
            let all_in = at >= compressed.len() && plain.len() < plain.capacity();
            let stuck = consumed == 0 && plain.len() == written;
            if all_in || stuck {
                break;
            }
        }
        parse_headers(&plain).ok_or_else(|| bad("is malformed"))
    }
}

/// A header block's pairs: a 32-bit count, then each name and value with
/// its 32-bit length. Several values of one name are NUL-separated; they
/// stay so.
fn parse_headers(mut block: &[u8]) -> Option<Vec<(String, String)>> {
    fn take<'a>(block: &mut &'a [u8]) -> Option<&'a [u8]> {
        if block.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
        let rest = block.get(4..4 + n)?;
        *block = &block[4 + n..];
        Some(rest)
    }
    let count = {
        let head = block.get(..4)?;
        block = &block[4..];
        u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize
    };
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut block)?).to_ascii_lowercase();
        let value = String::from_utf8_lossy(take(&mut block)?).into_owned();
        headers.push((name, value));
    }
    Some(headers)
}

/// Writes frames to the client; owns the compressor of the header blocks
/// it sends, so frames carrying one must be sent in the order made.
pub struct Writer {
    deflate: Compress,
}

impl Default for Writer {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh compressor takes a dictionary: this cannot fail.
        let _ = deflate.set_dictionary(dictionary());
        Self { deflate }
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u32(0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind));
    out.put_u32(u32::from(flags) << 24 | (body.len() as u32 & 0x00ff_ffff));
    out.put_slice(body);
    out.freeze()
}

impl Writer {
    /// SYN_REPLY accepting stream `id`, with no headers.
    pub fn syn_reply(&mut self, id: u32) -> Bytes {
        let mut body = id.to_be_bytes().to_vec();
        // An empty header block: a count of zero.
        let plain = 0u32.to_be_bytes();
        let mut at = 0;
        loop {
            body.reserve(64);
            let read = self.deflate.total_in();
            // Compressing from memory into memory does not fail.
            let _ = self
                .deflate
                .compress_vec(&plain[at..], &mut body, FlushCompress::Sync);
            at += (self.deflate.total_in() - read) as usize;
            if at >= plain.len() && body.len() < body.capacity() {
                break;
            }
        }
        control(SYN_REPLY, 0, &body)
    }
}

/// Data on stream `id`; `fin` ends the server's side of it.
pub fn data(id: u32, fin: bool, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u32(id & 0x7fff_ffff);
    out.put_u32(u32::from(if fin { FLAG_FIN } else { 0 }) << 24 | data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// The largest data frame's payload (SPDY lengths are 24 bits).
pub const MAX_DATA: usize = 0x00ff_ffff;

/// RST_STREAM of stream `id` with `status`.
pub fn rst_stream(id: u32, status: u32) -> Bytes {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    body[4..].copy_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

/// The answer to the client's PING `id`.
pub fn ping(id: u32) -> Bytes {
    control(PING, 0, &id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a SPDY client sends: a SYN_STREAM compressed with the
    /// dictionary, as spdystream's framer writes it.
    fn syn_stream(deflate: &mut Compress, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            plain.extend_from_slice(&(name.len() as u32).to_be_bytes());
            plain.extend_from_slice(name.as_bytes());
            plain.extend_from_slice(&(value.len() as u32).to_be_bytes());
            plain.extend_from_slice(value.as_bytes());
        }
        let mut block = Vec::with_capacity(plain.len() + 64);
        deflate
            .compress_vec(&plain, &mut block, FlushCompress::Sync)
            .unwrap();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        control(SYN_STREAM, 0, &body).to_vec()
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        // The checksum a SPDY/3 peer's zlib stream names (RFC 1950 DICTID).
        let adler = {
            let (mut a, mut b) = (1u32, 0u32);
            for byte in dictionary {
                a = (a + u32::from(*byte)) % 65521;
                b = (b + a) % 65521;
            }
            b << 16 | a
        };
        assert_eq!(adler, 0xe3c6_a7c2);
    }

    #[test]
    fn streams_are_read_in_any_pieces_with_one_decompressor_for_the_connection() {
        let mut client = Compress::new(Compression::default(), true);
        client.set_dictionary(dictionary()).unwrap();
        let mut wire = syn_stream(
            &mut client,
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
        );
        wire.extend(syn_stream(
            &mut client,
            3,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
        ));
        wire.extend_from_slice(&data(3, true, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend_from_slice(&ping(1));
        let mut reader = Reader::default();
        let mut frames = Vec::new();
        // One byte at a time: frames are whole only when all has come.
        for byte in wire {
            reader.push(&[byte]);
            while let Some(frame) = reader.next().unwrap() {
                frames.push(frame);
            }
        }
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    id: 1,
                    fin: false,
                    headers: owned(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
                },
                Frame::SynStream {
                    id: 3,
                    fin: false,
                    headers: owned(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
                },
                Frame::Data {
                    id: 3,
                    fin: true,
                    data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
                },
                Frame::Ping { id: 1 },
            ]
        );
    }

    #[test]
    fn replies_decompress_with_the_dictionary_one_context_for_all() {
        let mut writer = Writer::default();
        let mut client = Decompress::new(true);
        for id in [1u32, 3, 5] {
            let frame = writer.syn_reply(id);
            assert_eq!(frame[..4], [0x80, 0x03, 0x00, 0x02]);
            let length =
                usize::from(frame[5]) << 16 | usize::from(frame[6]) << 8 | usize::from(frame[7]);
            assert_eq!(frame.len(), 8 + length);
            assert_eq!(frame[8..12], id.to_be_bytes());
            let mut plain = Vec::with_capacity(64);
            let mut block = &frame[12..];
            loop {
                let before = client.total_in();
                match client.decompress_vec(block, &mut plain, FlushDecompress::Sync) {
                    Err(e) if e.needs_dictionary().is_some() => {
                        client.set_dictionary(dictionary()).unwrap();
                    }
                    other => {
                        other.unwrap();
                    }
                }
                block = &block[(client.total_in() - before) as usize..];
                if block.is_empty() {
                    break;
                }
            }
            assert_eq!(plain, vec![0, 0, 0, 0], "no headers");
        }
    }

    #[test]
    fn other_versions_and_truncated_control_frames_are_refused() {
        let mut reader = Reader::default();
        reader.push(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]);
        assert!(reader.next().is_err());
        let mut reader = Reader::default();
        reader.push(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 0]);
        assert!(reader.next().is_err());
    }
}
