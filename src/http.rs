//! Filters every resource shares: JSON/form bodies with a size limit, path
//! ids, pagination and the bearer-token [`authed`] filter.

use crate::auth::{Auth, AuthUser, Sealed};
use crate::config::LimitsConfig;
use crate::db::Pool;
use crate::error::{ApiError, FieldError, InvalidId};
use crate::limits::{Action, RateLimits};
use crate::server::PeerAddr;
use crate::validate::json_has_nul;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection, Reply};

/// What the resources' routes are built from. Each filter takes the parts
/// its handler needs; no handler sees the rest.
#[derive(Clone)]
pub struct Context {
    pub pool: Pool,
    pub auth: Arc<Auth>,
    pub limits: Arc<LimitsConfig>,
    pub rates: Arc<RateLimits>,
}

/// Hands a clone of `value` to the handler.
pub fn with<T: Clone + Send + Sync>(
    value: T,
) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// A JSON body serialised already (message bodies are built by PostgreSQL).
pub struct JsonText(pub String);

impl Reply for JsonText {
    fn into_response(self) -> Response {
        let mut response = Response::new(self.0.into());
        response.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Turns a handler's result into a response, so handlers can use `?`.
pub fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    result.into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

/// Reads the body, refusing more than `limit` bytes without buffering them
/// (chunked bodies included), then returns it with its declared kind.
fn limited_body(
    limit: u64,
    allow_form: bool,
) -> impl Filter<Extract = ((BodyKind, Vec<u8>),), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::body::stream())
        .and_then(move |headers: HeaderMap, stream| {
            read_limited(headers, stream, limit, allow_form)
        })
}

async fn read_limited<S, B>(
    headers: HeaderMap,
    stream: S,
    limit: u64,
    allow_form: bool,
) -> Result<(BodyKind, Vec<u8>), Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let kind = body_kind(&headers, allow_form)?;
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(warp::reject::custom(ApiError::PayloadTooLarge));
    }
    let mut stream = std::pin::pin!(stream);
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| warp::reject::custom(ApiError::InvalidBody(e.to_string())))?;
        if body.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(warp::reject::custom(ApiError::PayloadTooLarge));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            body.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok((kind, body))
}

fn body_kind(headers: &HeaderMap, allow_form: bool) -> Result<BodyKind, Rejection> {
    let Some(value) = headers.get(warp::http::header::CONTENT_TYPE) else {
        // Lenient: curl users forget the header; the body must still be JSON.
        return Ok(BodyKind::Json);
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-www-form-urlencoded" if allow_form => Ok(BodyKind::Form),
        _ => Err(warp::reject::custom(ApiError::UnsupportedMediaType)),
    }
}

/// A JSON body of at most `limit` bytes, decoded into `T`.
pub fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    limited_body(limit, false).and_then(|(_, body): (BodyKind, Vec<u8>)| async move {
        decode_json(&body).map_err(warp::reject::custom)
    })
}

/// A JSON body of at most `limit` bytes, or `T::default()` when there is none.
pub fn optional_json_body<T: DeserializeOwned + Default + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    limited_body(limit, false).and_then(|(_, body): (BodyKind, Vec<u8>)| async move {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        decode_json(&body).map_err(warp::reject::custom)
    })
}

/// A JSON or `application/x-www-form-urlencoded` body (register and login accept both).
pub fn json_or_form_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    limited_body(limit, true).and_then(|(kind, body): (BodyKind, Vec<u8>)| async move {
        match kind {
            BodyKind::Json => decode_json(&body),
            BodyKind::Form => decode_form(&body),
        }
        .map_err(warp::reject::custom)
    })
}

pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidBody(
            "request body is empty; send a JSON object".into(),
        ));
    }
    // Every body is an object; serde would also read a struct from an array.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidBody(
            "request body must be a JSON object".into(),
        ));
    }
    if json_has_nul(body) {
        return Err(ApiError::InvalidText);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidBody(format!("invalid JSON body: {e}")))
}

fn decode_form<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Form values are all strings; go through a JSON object so typed fields still
    // deserialize (warp's own form filter needs every field to be a string anyway).
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::InvalidBody("form body is not UTF-8".into()))?;
    let mut map = serde_json::Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(form_decode(k)?, serde_json::Value::String(form_decode(v)?));
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::InvalidBody(format!("invalid form body: {e}")))
}

fn form_decode(raw: &str) -> Result<String, ApiError> {
    let text = percent_decode(raw, true)
        .ok_or_else(|| ApiError::InvalidBody("malformed form encoding".into()))?;
    if text.contains('\0') {
        return Err(ApiError::InvalidText);
    }
    Ok(text)
}

/// `raw` with its `%XX` escapes decoded (and `+` read as a space when
/// `plus_is_space`, as forms and query strings write it; a path keeps it);
/// `None` for a malformed escape or text that is not UTF-8.
pub fn percent_decode(raw: &str, plus_is_space: bool) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A positive id path segment; anything else is a 400 rather than a 404.
pub fn id_param() -> impl Filter<Extract = (i64,), Error = Rejection> + Copy {
    warp::path::param::<String>().and_then(|raw: String| async move {
        parse_id(&raw).map_err(|e| warp::reject::custom(InvalidId(e)))
    })
}

/// `42`, or `42.0` as a client that wrote the integer as a JSON number with a
/// zero fraction may put it in a path (see `validate::integer`).
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    let digits = match raw.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() && fraction.bytes().all(|b| b == b'0') => {
            whole
        }
        _ => raw,
    };
    match digits.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::InvalidId(truncate(raw, 40).to_string())),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The raw query string as a map; never rejects (an absent query is empty).
pub fn query_map() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Copy {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            let mut map = HashMap::new();
            for pair in raw.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = form_decode(k).map_err(warp::reject::custom)?;
                let v = form_decode(v).map_err(warp::reject::custom)?;
                map.insert(k, v);
            }
            Ok::<_, Rejection>(map)
        })
}

/// A request's query string, with the bounds its paging obeys.
pub struct Query {
    params: HashMap<String, String>,
    max_offset: i64,
}

/// The query string (see [`Query`]); an absent one is empty.
pub fn query(ctx: &Context) -> impl Filter<Extract = (Query,), Error = Rejection> + Clone + use<> {
    let max_offset = ctx.limits.max_offset as i64;
    query_map().map(move |params| Query { params, max_offset })
}

impl Query {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `limit` 1-100 (default 50) and `offset` 0 to `limits.max_offset`;
    /// anything else is a 400 naming the field.
    pub fn page(&self, errors: &mut Vec<FieldError>) -> Page {
        let limit = int_param(&self.params, "limit", 1, MAX_LIMIT, errors).unwrap_or(DEFAULT_LIMIT);
        let offset = int_param(&self.params, "offset", 0, self.max_offset, errors).unwrap_or(0);
        Page { limit, offset }
    }

    /// An optional integer within `min..=max`, collecting errors.
    pub fn int(&self, name: &str, min: i64, max: i64, errors: &mut Vec<FieldError>) -> Option<i64> {
        int_param(&self.params, name, min, max, errors)
    }
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// `Err` naming every bad field when there are any.
pub fn validated(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Reads an optional integer query parameter within `min..=max`, collecting errors.
fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    let raw = q.get(name)?;
    match raw.trim().parse::<i64>() {
        Ok(v) if v >= min && v <= max => Some(v),
        _ => {
            let range = if max == i64::MAX {
                format!("an integer >= {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            errors.push(FieldError::new(name, format!("must be {range}")));
            None
        }
    }
}

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub fn authed(
    ctx: &Context,
) -> impl Filter<Extract = (AuthUser,), Error = Rejection> + Clone + use<> {
    bearer(ctx).and_then(|token: Bearer, auth: Arc<Auth>| async move {
        auth.authenticate(token.text()?)
            .await
            .map_err(warp::reject::custom)
    })
}

/// The `Authorization` header, and the [`Auth`] that checks its token.
fn bearer(
    ctx: &Context,
) -> impl Filter<Extract = (Bearer, Arc<Auth>), Error = Rejection> + Clone + use<> {
    warp::header::optional::<String>("authorization")
        .map(Bearer)
        .and(with(ctx.auth.clone()))
}

/// A request's `Authorization` header, if it has one.
struct Bearer(Option<String>);

impl Bearer {
    /// The token it carries: 401 without one.
    fn text(&self) -> Result<&str, Rejection> {
        self.0
            .as_deref()
            .and_then(bearer_token)
            .ok_or_else(|| warp::reject::custom(ApiError::Unauthorized("missing bearer token")))
    }
}

/// The caller as their token's seal proves them ([`Sealed`]), for a route
/// whose statement checks the token version itself: no lookup here.
pub fn sealed(
    ctx: &Context,
) -> impl Filter<Extract = (Sealed,), Error = Rejection> + Clone + use<> {
    bearer(ctx).and_then(|token: Bearer, auth: Arc<Auth>| async move {
        auth.open(token.text()?).map_err(warp::reject::custom)
    })
}

/// [`authed`], for an action with a rate limit: over it, the request is
/// refused (429) before its handler runs.
pub fn authed_for(
    ctx: &Context,
    action: Action,
) -> impl Filter<Extract = (AuthUser,), Error = Rejection> + Clone + use<> {
    authed(ctx).and(with(ctx.rates.clone())).and_then(
        move |user: AuthUser, rates: Arc<RateLimits>| async move {
            rates
                .check_user(action, user.id)
                .map(|()| user)
                .map_err(warp::reject::custom)
        },
    )
}

/// The client's address: the connection's peer, or, with
/// `limits.trust_forwarded_for`, the last `X-Forwarded-For` entry (the one
/// the proxy in front appended; earlier ones are the client's to forge).
pub fn client_ip(
    ctx: &Context,
) -> impl Filter<Extract = (IpAddr,), Error = Rejection> + Clone + use<> {
    let trust_forwarded = ctx.limits.trust_forwarded_for;
    warp::ext::optional::<PeerAddr>()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .map(move |peer: Option<PeerAddr>, forwarded: Option<String>| {
            let forwarded = forwarded
                .filter(|_| trust_forwarded)
                .and_then(|f| f.rsplit(',').next().and_then(|ip| ip.trim().parse().ok()));
            forwarded
                .or(peer.map(|p| p.0.ip()))
                .unwrap_or(IpAddr::from([0, 0, 0, 0]))
        })
}

/// Extracts the token of a `Bearer` header; the scheme is case-insensitive.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_rejects_out_of_range_values() {
        let q = |pairs: &[(&str, &str)]| Query {
            params: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            max_offset: 10_000,
        };
        let mut errors = Vec::new();
        assert_eq!(
            q(&[]).page(&mut errors),
            Page {
                limit: 50,
                offset: 0
            }
        );
        assert!(errors.is_empty());
        for bad in [
            &[("limit", "0")][..],
            &[("limit", "101")],
            &[("limit", "abc")],
            &[("offset", "-1")],
            &[("offset", "10001")],
            &[("limit", "99999999999999999999999")],
        ] {
            let mut errors = Vec::new();
            q(bad).page(&mut errors);
            assert!(!errors.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn ids_must_be_positive_integers() {
        assert_eq!(parse_id("42").unwrap(), 42);
        assert_eq!(parse_id("42.00").unwrap(), 42);
        for bad in [
            "0",
            "-1",
            "abc",
            "99999999999999999999",
            "1.5",
            "",
            "4.",
            ".0",
            "0.0",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_decoding_handles_escapes() {
        assert_eq!(form_decode("a+b%21").unwrap(), "a b!");
        assert!(form_decode("%zz").is_err());
        assert!(form_decode("%ff").is_err());
        assert!(form_decode("%2").is_err());
    }

    #[test]
    fn a_path_keeps_its_plus_signs() {
        assert_eq!(percent_decode("%3A%2B1%3A", false).as_deref(), Some(":+1:"));
        assert_eq!(percent_decode(":+1:", false).as_deref(), Some(":+1:"));
        assert_eq!(percent_decode("%F0%9F%91%8D", false).as_deref(), Some("👍"));
        assert_eq!(percent_decode("%F0%9F", false), None);
    }
}
