//! Process streams: a sequence of `[kind: u8][len: u32 BE][payload]` frames.
//! The same encoding rides in HTTP/2 bodies (host ⇄ agent) and, one frame
//! per binary message, in the daemon's WebSockets (client ⇄ daemon).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{ExecRequest, ExitStatus, PtySize, SignalRequest, Started};

/// Largest payload accepted; larger is a protocol error, never an allocation.
pub const MAX_FRAME: usize = 4 << 20;
const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    // client → agent
    Start(ExecRequest),
    Stdin(Bytes),
    StdinClose,
    Signal(SignalRequest),
    Resize(PtySize),
    // agent → client
    Started(Started),
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitStatus),
    Error(crate::types::ErrorBody),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("malformed frame payload: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("stream ended inside a frame")]
    Truncated,
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Start(_) => 0x01,
            Frame::Stdin(_) => 0x02,
            Frame::StdinClose => 0x03,
            Frame::Signal(_) => 0x04,
            Frame::Resize(_) => 0x05,
            Frame::Started(_) => 0x10,
            Frame::Stdout(_) => 0x11,
            Frame::Stderr(_) => 0x12,
            Frame::Exit(_) => 0x13,
            Frame::Error(_) => 0x14,
        }
    }

    pub fn encode(&self) -> Bytes {
        fn json<T: Serialize>(v: &T) -> Bytes {
            Bytes::from(serde_json::to_vec(v).expect("protocol types always serialize"))
        }
        let payload = match self {
            Frame::Start(r) => json(r),
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b.clone(),
            Frame::StdinClose => Bytes::new(),
            Frame::Signal(s) => json(s),
            Frame::Resize(s) => json(s),
            Frame::Started(s) => json(s),
            Frame::Exit(e) => json(e),
            Frame::Error(e) => json(e),
        };
        let mut out = BytesMut::with_capacity(HEADER + payload.len());
        out.put_u8(self.kind());
        out.put_u32(payload.len() as u32);
        out.extend_from_slice(&payload);
        out.freeze()
    }

    /// Decode one whole encoded frame (e.g. a WebSocket message).
    pub fn decode(mut buf: Bytes) -> Result<Frame, FrameError> {
        if buf.len() < HEADER {
            return Err(FrameError::Truncated);
        }
        let kind = buf.get_u8();
        let len = buf.get_u32() as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() != len {
            return Err(FrameError::Truncated);
        }
        Self::from_parts(kind, buf)
    }

    fn from_parts(kind: u8, payload: Bytes) -> Result<Frame, FrameError> {
        fn json<T: DeserializeOwned>(b: &Bytes) -> Result<T, FrameError> {
            Ok(serde_json::from_slice(b)?)
        }
        Ok(match kind {
            0x01 => Frame::Start(json(&payload)?),
            0x02 => Frame::Stdin(payload),
            0x03 => Frame::StdinClose,
            0x04 => Frame::Signal(json(&payload)?),
            0x05 => Frame::Resize(json(&payload)?),
            0x10 => Frame::Started(json(&payload)?),
            0x11 => Frame::Stdout(payload),
            0x12 => Frame::Stderr(payload),
            0x13 => Frame::Exit(json(&payload)?),
            0x14 => Frame::Error(json(&payload)?),
            k => return Err(FrameError::UnknownKind(k)),
        })
    }
}

/// Incremental decoder for frames split across arbitrary chunks.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        self.buf.advance(HEADER);
        let payload = self.buf.split_to(len).freeze();
        Frame::from_parts(kind, payload).map(Some)
    }

    /// True when no partial frame is pending.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Reads frames from any stream of byte chunks (an HTTP body, say).
#[derive(Debug)]
pub struct FrameReader<S> {
    inner: S,
    dec: FrameDecoder,
    done: bool,
}

impl<S, E> FrameReader<S>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(inner: S) -> Self {
        FrameReader { inner, dec: FrameDecoder::default(), done: false }
    }

    /// `None` at a clean end of stream; an error for a broken one.
    pub async fn next(&mut self) -> Option<Result<Frame, String>> {
        use futures::StreamExt;
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e.to_string())),
            }
            if self.done {
                return None;
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => self.dec.push(&chunk),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.to_string()));
                }
                None => {
                    self.done = true;
                    if !self.dec.is_empty() {
                        return Some(Err(FrameError::Truncated.to_string()));
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ErrorBody;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Start(ExecRequest { argv: vec!["ls".into()], stdin: true, ..Default::default() }),
            Frame::Stdin(Bytes::from_static(b"hello\0\xff")),
            Frame::StdinClose,
            Frame::Signal(SignalRequest { signal: 15 }),
            Frame::Resize(PtySize { cols: 80, rows: 24 }),
            Frame::Started(Started { pid: 42 }),
            Frame::Stdout(Bytes::from_static(b"out")),
            Frame::Stderr(Bytes::new()),
            Frame::Exit(ExitStatus { exit_code: 137, signal: Some(9), timed_out: true, message: None }),
            Frame::Error(ErrorBody { code: "x".into(), message: "y".into() }),
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        for f in all_frames() {
            assert_eq!(Frame::decode(f.encode()).unwrap(), f);
        }
    }

    #[test]
    fn decoder_handles_byte_by_byte_chunks() {
        let frames = all_frames();
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        let mut dec = FrameDecoder::default();
        let mut got = vec![];
        for b in wire {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(dec.is_empty());
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut dec = FrameDecoder::default();
        dec.push(&[0x11, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge(_))));
        assert!(matches!(Frame::decode(Bytes::from_static(&[0x77, 0, 0, 0, 0])), Err(FrameError::UnknownKind(0x77))));
        assert!(matches!(
            Frame::decode(Bytes::from_static(&[0x01, 0, 0, 0, 2, b'{', b'x'])),
            Err(FrameError::Payload(_))
        ));
        assert!(matches!(Frame::decode(Bytes::from_static(&[0x11, 0, 0, 0, 9, 1])), Err(FrameError::Truncated)));
    }
}
