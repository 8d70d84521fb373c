//! Any `:authority` on the Unix socket.
//!
//! A stock gRPC client decides the `:authority` of a `unix:` target itself: grpcio (gRPC C core)
//! sends the socket path, percent-encoded (`tmp%2Fxdplb%2Flbd.sock` for `unix:/tmp/xdplb/lbd.sock`),
//! others send `localhost` or nothing. The HTTP/2 server (h2, through hyper and tonic) parses
//! `:authority` with `http::uri::Authority`, which refuses a `%` outside userinfo and IPv6 zone
//! ids, and answers such a request with `RST_STREAM(PROTOCOL_ERROR)` before any service sees
//! it; h2 has no setting to relax that.
//!
//! On the Unix socket the authority means nothing (there is no host to name), so lbd accepts any:
//! [`AnyAuthority`] wraps each accepted connection and rewrites, in the client-to-server byte
//! stream only, every header block whose `:authority` `http` would refuse, to
//! `:authority: localhost`. Everything else is passed through byte for byte. A header block is
//! decoded with the client's HPACK state ([`loona_hpack::Decoder`]) and encoded again with an
//! encoder whose dynamic table mirrors h2's decoder (both 4,096 bytes, the HTTP/2 default that
//! lbd never changes), so that every block of the connection is re-encoded, not only the
//! rewritten ones. The TCP listener does not use it: there an authority names lbd's address and
//! is checked as HTTP/2 says.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a peer must accept whatever its settings (SETTINGS_MAX_FRAME_SIZE's
/// initial value); the frames written here are never larger, and header frames read larger are
/// refused (h2 refuses them too, as lbd never raises its limit).
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size of both directions' decoders (SETTINGS_HEADER_TABLE_SIZE's
/// initial value, which neither the client's decoder nor h2's is told otherwise by lbd).
const TABLE_SIZE: usize = 4_096;
/// Most bytes of one header block as it arrives (HEADERS and CONTINUATION fragments together).
const MAX_BLOCK: usize = 256 * 1024;
/// Most bytes of one decoded header list (names, values and 32 per field, as HTTP/2 counts it).
const MAX_LIST: usize = 1024 * 1024;
/// What an authority that `http` refuses becomes.
pub(crate) const REPLACEMENT: &str = "localhost";

/// Why a connection is closed: framing or HPACK that h2 would have answered with a connection
/// error anyway.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RewriteError {
    #[error("HTTP/2 header frame of {0} bytes (at most {MAX_FRAME})")]
    FrameTooLarge(usize),
    #[error("HTTP/2 header block of more than {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("HTTP/2 header list of more than {MAX_LIST} bytes once decoded")]
    ListTooLarge,
    #[error("HTTP/2 {0}")]
    Framing(&'static str),
    #[error("HPACK: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// Where the client's byte stream is.
enum Stage {
    /// Within the connection preface: this many bytes of it seen so far.
    Preface(usize),
    /// At a frame boundary (or inside the 9-byte header of the next frame).
    Frame,
    /// Inside the payload of a frame that passes unchanged: this many bytes left.
    Pass(usize),
    /// Not HTTP/2 with prior knowledge: everything passes unchanged (the server answers it).
    Raw,
}

/// A header block being collected, HEADERS then CONTINUATION frames.
struct Block {
    stream: u32,
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    /// The PRIORITY fields (5 bytes) when `flags` has PRIORITY.
    priority: [u8; 5],
    fragment: Vec<u8>,
}

/// The client-to-server half of an HTTP/2 connection, rewritten as the module says. Fed in
/// pieces of any size; writes what can go on to the server into `out`.
pub(crate) struct Rewriter {
    stage: Stage,
    /// Bytes of a frame header or of a whole header frame not complete yet.
    pending: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(TABLE_SIZE);
        Rewriter {
            stage: Stage::Preface(0),
            pending: BytesMut::new(),
            block: None,
            decoder,
            encoder,
            rewritten: 0,
        }
    }
}

impl Rewriter {
    /// How many header blocks had their authority replaced.
    pub(crate) fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes `input` (the next bytes from the client) and appends to `out` what goes on to the
    /// server.
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.stage {
                Stage::Raw => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                Stage::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    let (head, rest) = input.split_at(n);
                    out.extend_from_slice(head);
                    input = rest;
                    self.stage = if head != &PREFACE[seen..seen + n] {
                        Stage::Raw
                    } else if seen + n == PREFACE.len() {
                        Stage::Frame
                    } else {
                        Stage::Preface(seen + n)
                    };
                }
                Stage::Pass(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.stage = if n == left {
                        Stage::Frame
                    } else {
                        Stage::Pass(left - n)
                    };
                }
                Stage::Frame => {
                    if self.pending.len() < FRAME_HEADER {
                        let n = (FRAME_HEADER - self.pending.len()).min(input.len());
                        self.pending.extend_from_slice(&input[..n]);
                        input = &input[n..];
                        if self.pending.len() < FRAME_HEADER {
                            continue;
                        }
                    }
                    let h = &self.pending[..FRAME_HEADER];
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let kind = h[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.block.is_some() {
                            return Err(RewriteError::Framing(
                                "frame other than CONTINUATION inside a header block",
                            ));
                        }
                        out.extend_from_slice(&self.pending);
                        self.pending.clear();
                        self.stage = if len == 0 {
                            Stage::Frame
                        } else {
                            Stage::Pass(len)
                        };
                        continue;
                    }
                    if len > MAX_FRAME {
                        return Err(RewriteError::FrameTooLarge(len));
                    }
                    let need = FRAME_HEADER + len - self.pending.len();
                    let n = need.min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == need {
                        let frame = self.pending.split().freeze();
                        self.header_frame(&frame, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What is left at the end of the stream (a frame cut short) goes on as it is.
    pub(crate) fn finish(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.pending);
        self.pending.clear();
    }

    /// One whole HEADERS or CONTINUATION frame (header included).
    fn header_frame(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<(), RewriteError> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(RewriteError::Framing("HEADERS inside a header block"));
            }
            if flags & PADDED != 0 {
                let pad = usize::from(
                    *payload
                        .first()
                        .ok_or(RewriteError::Framing("PADDED HEADERS without a pad length"))?,
                );
                payload = payload
                    .get(1..payload.len().saturating_sub(pad))
                    .filter(|_| pad < payload.len())
                    .ok_or(RewriteError::Framing(
                        "HEADERS padding longer than the frame",
                    ))?;
            }
            let mut priority = [0u8; 5];
            if flags & PRIORITY != 0 {
                let p = payload
                    .get(..5)
                    .ok_or(RewriteError::Framing("HEADERS too short for PRIORITY"))?;
                priority.copy_from_slice(p);
                payload = &payload[5..];
            }
            self.block = Some(Block {
                stream,
                flags: flags & (END_STREAM | PRIORITY),
                priority,
                fragment: Vec::with_capacity(payload.len()),
            });
        }
        let block = self
            .block
            .as_mut()
            .ok_or(RewriteError::Framing("CONTINUATION outside a header block"))?;
        if block.stream != stream {
            return Err(RewriteError::Framing("CONTINUATION of another stream"));
        }
        if block.fragment.len() + payload.len() > MAX_BLOCK {
            return Err(RewriteError::BlockTooLarge);
        }
        block.fragment.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("a block is being collected");
            self.rewrite_block(block, out)?;
        }
        Ok(())
    }

    /// Decodes a whole header block, replaces a refused authority, encodes and frames it again.
    fn rewrite_block(&mut self, block: Block, out: &mut BytesMut) -> Result<(), RewriteError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size += name.len() + value.len() + 32;
                if size > MAX_LIST {
                    too_large = true;
                } else {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(RewriteError::Hpack)?;
        if too_large {
            return Err(RewriteError::ListTooLarge);
        }
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                *value = REPLACEMENT.as_bytes().to_vec();
                self.rewritten += 1;
            }
        }
        let encoded = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        let has_priority = block.flags & PRIORITY != 0;
        let first_room = MAX_FRAME - if has_priority { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(first_room.min(encoded.len()));
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(
            out,
            first.len() + if has_priority { 5 } else { 0 },
            HEADERS,
            block.flags | end,
            block.stream,
        );
        if has_priority {
            out.extend_from_slice(&block.priority);
        }
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(MAX_FRAME.min(rest.len()));
            let end = if tail.is_empty() { END_HEADERS } else { 0 };
            frame_header(out, chunk.len(), CONTINUATION, end, block.stream);
            out.extend_from_slice(chunk);
            rest = tail;
        }
        Ok(())
    }
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).expect("frames are at most MAX_FRAME long");
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A connection whose client-to-server bytes go through a [`Rewriter`]; writes pass unchanged.
pub struct AnyAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the server.
    out: BytesMut,
    eof: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        AnyAuthority {
            inner,
            rewriter: Rewriter::default(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut raw);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
                if this.rewriter.rewritten() > 0 {
                    tracing::debug!(
                        requests = this.rewriter.rewritten(),
                        "a gRPC client on the Unix socket ended; its :authority was replaced by {REPLACEMENT}"
                    );
                }
                continue;
            }
            if let Err(e) = this.rewriter.feed(rb.filled(), &mut this.out) {
                tracing::debug!(error = %e, "closing a gRPC connection on the Unix socket");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for AnyAuthority<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What grpcio 1.85 (gRPC C core 58) sent to `unix:/tmp/xdplb/lbd.sock` for two
    /// `grpc.health.v1.Health/Check` calls on one channel (service `""`, then
    /// `xdplb.v1.Vips`), captured from a plain socket: the preface, SETTINGS, WINDOW_UPDATE,
    /// SETTINGS ACK, then per call HEADERS (Huffman-coded, `:authority: tmp%2Fxdplb%2Flbd.sock`;
    /// the second call's fields come from the dynamic table), WINDOW_UPDATE and the DATA of
    /// the request. Only the RST_STREAMs of the calls' deadlines are left out.
    pub(crate) const GRPCIO_CAPTURE: &[&str] = &[
        "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a000024040000000000000200000000000300000000000400",
        "400000000500400000000600004000fe0300000001000004080000000000003f00010000000401000000000000f30104",
        "0000000140053a706174681c2f677270632e6865616c74682e76312e4865616c74682f436865636b400a3a617574686f",
        "7269747916746d702532467864706c622532466c62642e736f636b8386400c636f6e74656e742d74797065106170706c",
        "69636174696f6e2f677270634002746508747261696c6572734014677270632d6163636570742d656e636f64696e6717",
        "6964656e746974792c206465666c6174652c20677a6970400c677270632d74696d656f7574043939396d400a75736572",
        "2d6167656e7430677270632d707974686f6e2f312e38352e3420677270632d632f35382e302e3020286c696e75783b20",
        "636874747032290000040800000000010000000500000500010000000100000000000000040800000000000000000500",
        "0019010400000003c4c38386c2c1c0400c677270632d74696d656f7574023153bf000004080000000003000000050000",
        "14000100000003000000000f0a0d7864706c622e76312e5669707300000408000000000000000005",
    ];

    pub(crate) fn capture() -> Vec<u8> {
        let hex: String = GRPCIO_CAPTURE.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A frame as it is on the wire.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Frame {
        pub(crate) kind: u8,
        pub(crate) flags: u8,
        pub(crate) stream: u32,
        pub(crate) payload: Vec<u8>,
    }

    /// Splits a client byte stream (preface first) or a server one (`preface` false) into
    /// frames; a frame cut short at the end is left out.
    pub(crate) fn frames(mut bytes: &[u8], preface: bool) -> Vec<Frame> {
        if preface {
            assert_eq!(&bytes[..24], PREFACE, "starts with the preface");
            bytes = &bytes[24..];
        }
        let mut out = Vec::new();
        while bytes.len() >= FRAME_HEADER {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            if bytes.len() < FRAME_HEADER + len {
                break;
            }
            out.push(Frame {
                kind: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
                payload: bytes[FRAME_HEADER..FRAME_HEADER + len].to_vec(),
            });
            bytes = &bytes[FRAME_HEADER + len..];
        }
        out
    }

    type Fields = Vec<(String, String)>;

    /// The header lists of `frames` (HEADERS + CONTINUATION, padding and priority taken off),
    /// decoded in order with one fresh decoder, and every other frame as it is.
    pub(crate) fn decode(frames: &[Frame]) -> (Vec<(u32, Fields)>, Vec<Frame>) {
        let mut decoder = loona_hpack::Decoder::new();
        let (mut lists, mut others) = (Vec::new(), Vec::new());
        let mut block: Vec<u8> = Vec::new();
        for f in frames {
            match f.kind {
                HEADERS | CONTINUATION => {
                    let mut p = &f.payload[..];
                    if f.kind == HEADERS && f.flags & PADDED != 0 {
                        let pad = usize::from(p[0]);
                        p = &p[1..p.len() - pad];
                    }
                    if f.kind == HEADERS && f.flags & PRIORITY != 0 {
                        p = &p[5..];
                    }
                    block.extend_from_slice(p);
                    if f.flags & END_HEADERS != 0 {
                        let fields = decoder
                            .decode(&block)
                            .expect("a valid header block")
                            .into_iter()
                            .map(|(n, v)| {
                                (
                                    String::from_utf8(n).expect("utf-8 name"),
                                    String::from_utf8(v).expect("utf-8 value"),
                                )
                            })
                            .collect();
                        lists.push((f.stream, fields));
                        block.clear();
                    }
                }
                _ => others.push(f.clone()),
            }
        }
        (lists, others)
    }

    fn rewrite_in_chunks(input: &[u8], chunk: usize) -> (Vec<u8>, u64) {
        let mut r = Rewriter::default();
        let mut out = BytesMut::new();
        for piece in input.chunks(chunk) {
            r.feed(piece, &mut out).expect("rewritten");
        }
        r.finish(&mut out);
        (out.to_vec(), r.rewritten())
    }

    fn authority(fields: &Fields) -> Option<&str> {
        fields
            .iter()
            .find(|(n, _)| n == ":authority")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn grpcios_authority_becomes_localhost_in_any_chunking() {
        let input = capture();
        let (whole, rewritten) = rewrite_in_chunks(&input, input.len());
        assert_eq!(rewritten, 2, "both calls' authority");
        for chunk in (1..=40).chain([64, 100, 243, 251, 300]) {
            assert_eq!(
                rewrite_in_chunks(&input, chunk).0,
                whole,
                "in chunks of {chunk}"
            );
        }
        let (before, before_others) = decode(&frames(&input, true));
        let (after, after_others) = decode(&frames(&whole, true));
        // The second call's block leans on the dynamic table (a few bytes for nine fields), so
        // the decoder's state across blocks is exercised.
        let second = frames(&input, true)
            .into_iter()
            .filter(|f| f.kind == HEADERS)
            .nth(1)
            .expect("two HEADERS");
        assert!(second.payload.len() < 40, "{second:?}");
        assert_eq!(before.len(), 2);
        assert_eq!(after.len(), before.len());
        for ((s0, f0), (s1, f1)) in before.iter().zip(&after) {
            assert_eq!(s0, s1);
            assert_eq!(authority(f0), Some("tmp%2Fxdplb%2Flbd.sock"));
            assert_eq!(authority(f1), Some(REPLACEMENT));
            let strip = |f: &Fields| -> Fields {
                f.iter()
                    .filter(|(n, _)| n != ":authority")
                    .cloned()
                    .collect()
            };
            assert_eq!(
                strip(f0),
                strip(f1),
                "every other field as it was, in order"
            );
        }
        // SETTINGS, WINDOW_UPDATEs, the DATA of both requests: byte for byte.
        assert_eq!(before_others, after_others);
        assert_eq!(before_others.len(), 9);
        // The HEADERS frames keep END_HEADERS and have no END_STREAM (the DATA ends the call).
        for f in frames(&whole, true).iter().filter(|f| f.kind == HEADERS) {
            assert_eq!(f.flags, END_HEADERS, "{f:?}");
        }
    }

    /// A client connection: the preface, an empty SETTINGS, then `blocks` as HEADERS frames
    /// (flags and all, `block` being the whole payload).
    fn connection(blocks: &[(u8, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.extend_from_slice(PREFACE);
        frame_header(&mut out, 0, 0x4, 0, 0);
        for (flags, stream, payload) in blocks {
            frame_header(&mut out, payload.len(), HEADERS, *flags, *stream);
            out.extend_from_slice(payload);
        }
        out.to_vec()
    }

    fn request(authority: &str, extra: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/xdplb.v1.Vips/ListVips".to_vec()),
            (b":authority".to_vec(), authority.as_bytes().to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
        ];
        if extra > 0 {
            h.push((b"x-big".to_vec(), vec![b'a'; extra]));
        }
        h
    }

    #[test]
    fn only_refused_authorities_change() {
        let mut enc = loona_hpack::Encoder::new();
        let cases = [
            ("10.0.0.1:50051", "10.0.0.1:50051"),
            ("localhost", "localhost"),
            ("[::1]:50051", "[::1]:50051"),
            ("lbd.example:443", "lbd.example:443"),
            ("tmp%2Fx.sock", REPLACEMENT),
            ("", REPLACEMENT),
            ("a b", REPLACEMENT),
            ("/run/xdplb/lbd.sock", REPLACEMENT),
        ];
        let blocks: Vec<(u8, u32, Vec<u8>)> = cases
            .iter()
            .enumerate()
            .map(|(i, (a, _))| {
                let h = request(a, 0);
                let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
                (END_HEADERS, 2 * i as u32 + 1, block)
            })
            .collect();
        let input = connection(&blocks);
        let (out, rewritten) = rewrite_in_chunks(&input, 7);
        assert_eq!(rewritten, 4);
        let (lists, _) = decode(&frames(&out, true));
        let got: Vec<&str> = lists
            .iter()
            .map(|(_, f)| authority(f).expect("authority"))
            .collect();
        let want: Vec<&str> = cases.iter().map(|(_, w)| *w).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn padding_priority_and_large_blocks_are_framed_again() {
        let mut enc = loona_hpack::Encoder::new();
        // Padded, with priority, END_STREAM: the padding goes, the rest stays.
        let h = request("tmp%2Fa", 0);
        let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut padded = vec![3u8];
        padded.extend_from_slice(&[0x80, 0, 0, 1, 15]);
        padded.extend_from_slice(&block);
        padded.extend_from_slice(&[0, 0, 0]);
        // More than one frame's worth once encoded: HEADERS then CONTINUATION frames.
        let h2 = request("tmp%2Fb", 40_000);
        let big = enc.encode(h2.iter().map(|(n, v)| (&n[..], &v[..])));
        let input = {
            let mut c = connection(&[(END_HEADERS | PADDED | PRIORITY | END_STREAM, 1, padded)]);
            // The big block arrives in three frames of its own.
            let (a, rest) = big.split_at(10_000);
            let (b, c3) = rest.split_at(16_000);
            let mut t = BytesMut::new();
            frame_header(&mut t, a.len(), HEADERS, 0, 3);
            t.extend_from_slice(a);
            frame_header(&mut t, b.len(), CONTINUATION, 0, 3);
            t.extend_from_slice(b);
            frame_header(&mut t, c3.len(), CONTINUATION, END_HEADERS, 3);
            t.extend_from_slice(c3);
            c.extend_from_slice(&t);
            c
        };
        let (out, rewritten) = rewrite_in_chunks(&input, 4096);
        assert_eq!(rewritten, 2);
        let fs = frames(&out, true);
        let first = &fs[1];
        assert_eq!(first.kind, HEADERS);
        assert_eq!(
            first.flags,
            END_HEADERS | PRIORITY | END_STREAM,
            "PADDED is gone"
        );
        assert_eq!(&first.payload[..5], &[0x80, 0, 0, 1, 15], "priority kept");
        let rest: Vec<&Frame> = fs[2..].iter().collect();
        assert_eq!(rest[0].kind, HEADERS);
        assert!(rest.len() >= 3, "{} frames", rest.len());
        for f in &rest {
            assert!(f.payload.len() <= MAX_FRAME);
            assert_eq!(f.stream, 3);
        }
        for f in &rest[1..] {
            assert_eq!(f.kind, CONTINUATION);
        }
        assert!(rest
            .iter()
            .rev()
            .skip(1)
            .all(|f| f.flags & END_HEADERS == 0));
        assert_eq!(rest.last().map(|f| f.flags), Some(END_HEADERS));
        let (lists, _) = decode(&fs);
        assert_eq!(authority(&lists[0].1), Some(REPLACEMENT));
        assert_eq!(authority(&lists[1].1), Some(REPLACEMENT));
        assert_eq!(lists[1].1.last().map(|(_, v)| v.len()), Some(40_000));
    }

    #[test]
    fn not_http2_and_bad_framing() {
        // HTTP/1.1 is not looked at: the server answers it as it would.
        let http1 = b"GET / HTTP/1.1\r\nHost: a%2Fb\r\n\r\n".repeat(3);
        assert_eq!(rewrite_in_chunks(&http1, 5).0, http1);
        // CONTINUATION with no HEADERS before it; a header frame over the frame size limit;
        // garbage HPACK: the connection is closed (h2 would close it too).
        let mut cont = connection(&[]);
        let mut t = BytesMut::new();
        frame_header(&mut t, 1, CONTINUATION, END_HEADERS, 1);
        t.put_u8(0x82);
        cont.extend_from_slice(&t);
        let mut r = Rewriter::default();
        assert!(matches!(
            r.feed(&cont, &mut BytesMut::new()),
            Err(RewriteError::Framing(_))
        ));
        let mut big = connection(&[]);
        let mut t = BytesMut::new();
        frame_header(&mut t, MAX_FRAME + 1, HEADERS, END_HEADERS, 1);
        big.extend_from_slice(&t);
        let mut r = Rewriter::default();
        assert!(matches!(
            r.feed(&big, &mut BytesMut::new()),
            Err(RewriteError::FrameTooLarge(_))
        ));
        let garbage = connection(&[(END_HEADERS, 1, vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff])]);
        let mut r = Rewriter::default();
        assert!(matches!(
            r.feed(&garbage, &mut BytesMut::new()),
            Err(RewriteError::Hpack(_))
        ));
        // A big DATA frame passes through in pieces, unchanged.
        let mut data = connection(&[]);
        let mut t = BytesMut::new();
        frame_header(&mut t, 100_000, 0x0, 0x1, 1);
        t.extend_from_slice(&vec![7u8; 100_000]);
        data.extend_from_slice(&t);
        assert_eq!(rewrite_in_chunks(&data, 333).0, data);
    }
}
