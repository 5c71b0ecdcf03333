//! The untagged packets a client sends before framing starts: SSLRequest,
//! GSSENCRequest, CancelRequest and the StartupMessage.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{be_i32, cstr};

/// PostgreSQL's own cap on a startup packet (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP_PACKET: i32 = 10_000;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_MAJOR: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup {
        /// The minor protocol version the client asked for (3.x).
        minor_version: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed during startup")]
    Closed,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {}.{}: server supports 3.0", .0 >> 16, .0 & 0xffff)]
    UnsupportedVersion(i32),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Reads one startup-phase packet.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, StartupError> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len).await {
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => StartupError::Closed,
            _ => e.into(),
        });
    }
    let len = i32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    parse_startup(&body)
}

/// Parses a startup packet body (everything after the length word).
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let code = be_i32(body);
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if body.len() != 12 {
                return Err(StartupError::Malformed("cancel request must be 16 bytes"));
            }
            Ok(StartupPacket::Cancel {
                pid: be_i32(&body[4..8]),
                secret: be_i32(&body[8..12]),
            })
        }
        _ if code >> 16 == PROTOCOL_MAJOR => Ok(StartupPacket::Startup {
            minor_version: (code & 0xffff) as u16,
            params: parse_params(&body[4..])?,
        }),
        _ => Err(StartupError::UnsupportedVersion(code)),
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        match rest {
            [0] => return Ok(params),
            [] => return Err(StartupError::Malformed("missing terminator")),
            _ => {}
        }
        let (name, after) = cstr(rest).ok_or(StartupError::Malformed("bad parameter name"))?;
        let (value, after) = cstr(after).ok_or(StartupError::Malformed("bad parameter value"))?;
        if name.is_empty() {
            return Err(StartupError::Malformed("empty parameter name"));
        }
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, tail: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn recognises_every_request_code() {
        assert_eq!(
            parse_startup(&packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup(&packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut cancel = 42i32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        assert_eq!(
            parse_startup(&packet(CANCEL_REQUEST, &cancel)).unwrap(),
            StartupPacket::Cancel { pid: 42, secret: 7 }
        );
    }

    #[test]
    fn startup_parameters_are_parsed_in_order() {
        let p = parse_startup(&packet(196_608, b"user\0app\0database\0db\0\0")).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor_version: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        let p = parse_startup(&packet(196_610, b"user\0app\0\0")).unwrap();
        assert!(matches!(
            p,
            StartupPacket::Startup {
                minor_version: 2,
                ..
            }
        ));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for body in [
            packet(196_608, b"user\0app"),
            packet(196_608, b"user\0"),
            packet(196_608, b""),
            packet(196_608, b"\0x\0\0"),
            packet(CANCEL_REQUEST, b"123"),
            packet(0x0002_0000, b"\0"),
            vec![1, 2],
        ] {
            assert!(parse_startup(&body).is_err(), "{body:?}");
        }
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading() {
        let mut input: &[u8] = &i32::MAX.to_be_bytes();
        assert!(matches!(
            read_startup(&mut input).await,
            Err(StartupError::BadLength(i32::MAX))
        ));
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_startup(&mut empty).await,
            Err(StartupError::Closed)
        ));
    }
}
