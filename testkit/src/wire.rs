//! Raw protocol for the tests that speak to the proxy byte by byte: a
//! startup packet, tagged messages out, and tagged messages read back (over
//! TCP or anything else that reads, TLS included).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A StartupMessage (or any length-prefixed startup packet) for `version`.
pub fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Appends one tagged message (`Q`, `P`, `B`, `E`, `S`, ...) to `out`.
pub fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend(((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads one tagged message: its tag and body.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut header))
        .await
        .expect("a reply in time")
        .expect("a message header");
    let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await.unwrap();
    (header[0], body)
}

/// Reads messages until one tagged `tag`; returns its body.
pub async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, tag: u8) -> Vec<u8> {
    loop {
        let (t, body) = read_message(stream).await;
        if t == tag {
            return body;
        }
    }
}
