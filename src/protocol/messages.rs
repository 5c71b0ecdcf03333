//! The messages Palisade writes itself, encoded with pgwire's types.
//!
//! Everything a server says is relayed as bytes; these are only the replies
//! the proxy owns: its part of startup, errors raised at the proxy, and the
//! answers to the commands it runs itself.

use bytes::BytesMut;
use pgwire::error::ErrorInfo;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

/// The SQLSTATE codes Palisade raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sqlstate {
    /// 08P01: the client broke the protocol.
    ProtocolViolation,
    /// 08006: a server connection failed.
    ConnectionFailure,
    /// 08001: no server connection could be opened.
    UnableToConnect,
    /// 28P01: wrong password.
    InvalidPassword,
    /// 28000: unknown user or unusable credentials.
    InvalidAuthorization,
    /// 53300: too many connections.
    TooManyConnections,
    /// 54000: a message over the size limit.
    ProgramLimitExceeded,
    /// 57P01: the proxy is shutting down.
    AdminShutdown,
    /// 57P03: a connection arriving while the proxy drains.
    CannotConnectNow,
    /// 57P05: a session idle longer than `client_idle_timeout_ms`.
    IdleSessionTimeout,
    /// 42501: an admin console command the user may not run.
    InsufficientPrivilege,
    /// 0A000: a feature the proxy does not support.
    FeatureNotSupported,
    /// F0000: `RELOAD` found a config file it cannot use.
    ConfigFileError,
    /// 22023: a `palisade.*` setting given a value it cannot take.
    InvalidParameterValue,
    /// 55P02: a read-only `palisade.*` setting.
    CantChangeRuntimeParam,
    /// 25P02: a command in a failed transaction.
    InFailedTransaction,
    /// 08007: a COMMIT sent to a server that was lost before it answered.
    TransactionResolutionUnknown,
    /// 40001: a transaction replayed after a failover gave other results.
    SerializationFailure,
    /// 55000: no node may serve the request as the configuration asks.
    ObjectNotInPrerequisiteState,
    /// 42601: a command the admin console does not know.
    SyntaxError,
    /// XX000: a bug in the proxy.
    Internal,
}

impl Sqlstate {
    pub fn code(self) -> &'static str {
        match self {
            Sqlstate::ProtocolViolation => "08P01",
            Sqlstate::ConnectionFailure => "08006",
            Sqlstate::UnableToConnect => "08001",
            Sqlstate::InvalidPassword => "28P01",
            Sqlstate::InvalidAuthorization => "28000",
            Sqlstate::TooManyConnections => "53300",
            Sqlstate::ProgramLimitExceeded => "54000",
            Sqlstate::AdminShutdown => "57P01",
            Sqlstate::CannotConnectNow => "57P03",
            Sqlstate::IdleSessionTimeout => "57P05",
            Sqlstate::InsufficientPrivilege => "42501",
            Sqlstate::FeatureNotSupported => "0A000",
            Sqlstate::InvalidParameterValue => "22023",
            Sqlstate::ConfigFileError => "F0000",
            Sqlstate::CantChangeRuntimeParam => "55P02",
            Sqlstate::InFailedTransaction => "25P02",
            Sqlstate::TransactionResolutionUnknown => "08007",
            Sqlstate::SerializationFailure => "40001",
            Sqlstate::ObjectNotInPrerequisiteState => "55000",
            Sqlstate::SyntaxError => "42601",
            Sqlstate::Internal => "XX000",
        }
    }
}

/// Encodes a pgwire message; our own messages are small and well-formed, so
/// the only possible failure (over pgwire's size cap) cannot happen here.
fn encode(buf: &mut BytesMut, message: &impl Message) {
    if let Err(e) = message.encode(buf) {
        tracing::error!(error = %e, "failed to encode a proxy message");
    }
}

/// An ErrorResponse (`fatal` decides between FATAL and ERROR).
pub fn error(buf: &mut BytesMut, fatal: bool, state: Sqlstate, message: &str) {
    let severity = if fatal { "FATAL" } else { "ERROR" };
    encode_error_info(
        buf,
        ErrorInfo::new(severity.into(), state.code().into(), message.into()),
    );
}

/// An ErrorResponse from pgwire's own error description (authentication failures).
pub fn encode_error_info(buf: &mut BytesMut, info: ErrorInfo) {
    encode(buf, &ErrorResponse::from(info));
}

/// A NoticeResponse of severity NOTICE.
pub fn notice(buf: &mut BytesMut, message: &str) {
    let info = ErrorInfo::new("NOTICE".into(), "00000".into(), message.into());
    encode(buf, &NoticeResponse::from(info));
}

/// A complete result of text columns: RowDescription, a DataRow per row
/// (`None` is NULL), CommandComplete with `tag`.
pub fn text_result(buf: &mut BytesMut, columns: &[&str], rows: &[Vec<Option<String>>], tag: &str) {
    const TEXT_OID: u32 = 25;
    let fields = columns
        .iter()
        .map(|name| FieldDescription::new((*name).to_owned(), 0, 0, TEXT_OID, -1, -1, 0))
        .collect();
    encode(buf, &RowDescription::new(fields));
    for row in rows {
        let mut data = BytesMut::new();
        for value in row {
            match value {
                Some(v) => {
                    // A value comes from Palisade itself, far below 2 GiB.
                    data.extend_from_slice(
                        &i32::try_from(v.len()).unwrap_or(i32::MAX).to_be_bytes(),
                    );
                    data.extend_from_slice(v.as_bytes());
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let count = i16::try_from(row.len()).unwrap_or(i16::MAX);
        encode(buf, &DataRow::new(data, count));
    }
    command_complete(buf, tag);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    encode(buf, &CommandComplete::new(tag.to_owned()));
}

pub fn authentication(buf: &mut BytesMut, auth: &Authentication) {
    encode(buf, auth);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    encode(buf, &ParameterStatus::new(name.into(), value.into()));
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    encode(buf, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    ready(buf, super::TxnStatus::from_byte(status));
}

/// ReadyForQuery with the session's transaction status.
pub fn ready(buf: &mut BytesMut, status: super::TxnStatus) {
    let status = match status {
        super::TxnStatus::InTransaction => TransactionStatus::Transaction,
        super::TxnStatus::Failed => TransactionStatus::Error,
        super::TxnStatus::Idle => TransactionStatus::Idle,
    };
    encode(buf, &ReadyForQuery::new(status));
}

/// A simple Query, for the statements the proxy itself sends a server.
pub fn query(buf: &mut BytesMut, sql: &str) {
    encode(
        buf,
        &pgwire::messages::simplequery::Query::new(sql.to_owned()),
    );
}

/// The protocol version we speak, 3.0, as a startup packet spells it.
const PROTOCOL_3_0: i32 = 3 << 16;

/// Tells a client asking for protocol 3.x (x > 0) or `_pq_` options that we speak 3.0.
///
/// The version field carries the whole version number (196608), as
/// PostgreSQL sends it, not the bare minor number the protocol docs name:
/// libpq 18 reads 0 as a request to go below 3.0 and gives up.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported_options: Vec<String>) {
    encode(
        buf,
        &NegotiateProtocolVersion::new(PROTOCOL_3_0, unsupported_options),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_carries_severity_code_and_message() {
        let mut buf = BytesMut::new();
        error(&mut buf, true, Sqlstate::InvalidPassword, "nope");
        assert_eq!(buf[0], b'E');
        let body = &buf[5..];
        let text = String::from_utf8_lossy(body);
        assert!(text.contains("SFATAL\0"), "{text:?}");
        assert!(text.contains("C28P01\0"), "{text:?}");
        assert!(text.contains("Mnope\0"), "{text:?}");
        assert_eq!(super::super::be_i32(&buf[1..5]) as usize, buf.len() - 1);
    }

    #[test]
    fn query_is_a_q_frame_with_the_text() {
        let mut buf = BytesMut::new();
        query(&mut buf, "SET a TO 1");
        assert_eq!(&buf[..], b"Q\0\0\0\x0fSET a TO 1\0");
    }

    #[test]
    fn ready_for_query_maps_status_bytes() {
        for status in [b'I', b'T', b'E'] {
            let mut buf = BytesMut::new();
            ready_for_query(&mut buf, status);
            assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, status]);
        }
    }
}
