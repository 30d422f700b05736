//! Small helpers every layer may use: RFC 3339 text and random bytes.

use std::future::Future;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// 32 bytes from the OS's CSPRNG.
pub fn random_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf
}

/// A timestamp as the RFC 3339 text every body carries.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

tokio::task_local! {
    /// The id of the request being served (see `server`).
    static REQUEST_ID: std::sync::Arc<str>;
}

/// Runs `work` as the serving of request `id`: errors and log lines within
/// it carry the id.
pub async fn serving_request<T>(id: std::sync::Arc<str>, work: impl Future<Output = T>) -> T {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request being served, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.to_string()).ok()
}
