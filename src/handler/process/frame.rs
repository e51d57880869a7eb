//! The frame codec of the process protocol: each frame is a 4-byte
//! big-endian length and that many bytes. A request is a JSON header frame
//! and a payload frame; a response is a JSON header frame and one payload
//! frame per output. Reads are bounded by the frame limits in the parent
//! module, and the decoder is what the `frame` fuzz target exercises.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{MAX_HEADER_BYTES, MAX_OUTPUT_BYTES};

/// Why one request/response exchange failed. Every kind discards the
/// instance.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request or reading the response failed.
    #[error("pipe error: {0}")]
    Io(#[from] std::io::Error),
    /// The process ended before it answered.
    #[error("the process exited ({0}) before answering")]
    Exited(String),
    /// The process answered with something that is not a valid response.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The request header, as sent.
#[derive(Debug, Serialize)]
pub(super) struct RequestHeader<'a> {
    pub(super) id: &'a str,
    pub(super) route: &'a str,
    pub(super) subject: &'a str,
    pub(super) key: Option<String>,
    pub(super) headers: BTreeMap<&'a str, &'a str>,
    pub(super) attempt: u32,
    pub(super) deadline_ms: u64,
}

/// The response header, as received.
#[derive(Debug, Deserialize)]
pub(super) struct ResponseHeader {
    pub(super) id: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) error: Option<String>,
    #[serde(default)]
    pub(super) outputs: Vec<OutputHeader>,
}

/// One output's header, as received.
#[derive(Debug, Deserialize)]
pub(super) struct OutputHeader {
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) key: Option<String>,
}

/// Appends one frame: its length, then its bytes.
pub(super) fn put_frame(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ExchangeError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| ExchangeError::Protocol("a frame is larger than 4 GiB".to_owned()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads one frame of at most `max` bytes.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    what: &str,
) -> Result<Bytes, ExchangeError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ExchangeError::Protocol(format!(
            "{what} frame of {len} bytes is larger than the limit of {max}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ExchangeError::Protocol(format!("the stream ended inside the {what} frame"))
        } else {
            e.into()
        }
    })?;
    Ok(buf.into())
}

/// The entry point of the `frame` fuzz target: decodes a response (header
/// frame, JSON header, one payload frame per output) from raw bytes, as
/// `exchange` reads it from a process. Any input must give a response or
/// an error, never a panic or an unbounded allocation.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    futures::executor::block_on(async {
        let mut r = data;
        let Ok(head) = read_frame(&mut r, MAX_HEADER_BYTES, "response header").await else {
            return;
        };
        let Ok(resp) = serde_json::from_slice::<ResponseHeader>(&head) else {
            return;
        };
        for _ in &resp.outputs {
            if read_frame(&mut r, MAX_OUTPUT_BYTES, "output payload")
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

/// The start of a bad frame, quoted, for error messages.
pub(super) fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
    format!("{text:?}")
}
