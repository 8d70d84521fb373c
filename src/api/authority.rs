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
