//! fern logging, as text lines or JSON lines (`log.format`). Every line
//! written while a request is served carries its request id. One line per
//! request (method, path without its query, status, latency): query strings
//! and bodies are never logged — `/ws?token=...` carries a token, and
//! register, login and password changes carry passwords.

use log::kv::{Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

pub fn init(level: &str, json: bool) -> Result<(), fern::InitError> {
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    fern::Dispatch::new()
        .format(move |out, message, record| {
            let line = if json {
                json_line(message, record)
            } else {
                text_line(message, record)
            };
            out.finish(format_args!("{line}"))
        })
        .level(level)
        // hyper and tokio-postgres are chatty at debug level.
        .level_for("hyper", log::LevelFilter::Info)
        .level_for("tokio_postgres", log::LevelFilter::Info)
        .chain(std::io::stderr())
        .apply()?;
    Ok(())
}

fn text_line(message: &std::fmt::Arguments, record: &log::Record) -> String {
    let mut line = format!(
        "{} {:5} {}: {}",
        crate::support::now_rfc3339(),
        record.level(),
        record.target(),
        message
    );
    if let Some(id) = crate::support::request_id() {
        line.push_str(&format!(" request_id={id}"));
    }
    line
}

fn json_line(message: &std::fmt::Arguments, record: &log::Record) -> String {
    let mut fields = Map::new();
    fields.insert("ts".into(), crate::support::now_rfc3339().into());
    fields.insert("level".into(), record.level().as_str().into());
    fields.insert("target".into(), record.target().into());
    fields.insert("message".into(), message.to_string().into());
    if let Some(id) = crate::support::request_id() {
        fields.insert("request_id".into(), id.into());
    }
    let _ = record.key_values().visit(&mut Fields(&mut fields));
    Json::Object(fields).to_string()
}

/// Copies a record's key-values into a JSON object.
struct Fields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(f) = value.to_f64() {
            Json::from(f)
        } else {
            Json::from(value.to_string())
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

/// The one line a request is logged with; JSON lines also get its parts as fields.
/// Whether [`log_request`] writes anything at the configured level.
pub fn logs_requests() -> bool {
    log::log_enabled!(target: "chatapp::request", log::Level::Info)
}

pub fn log_request(method: &str, path: &str, status: u16, millis: f64) {
    log::info!(
        target: "chatapp::request",
        method = method, path = path, status = status, duration_ms = millis;
        "{method} {path} {status} {millis:.1}ms"
    );
}
