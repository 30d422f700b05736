//! The machine-readable contract: `openapi.yaml` (every HTTP endpoint) and
//! `asyncapi.yaml` (every WebSocket frame), hand-written next to the code,
//! embedded in the binary and served as JSON.
//!
//! The OpenAPI document is also the route table. A request whose path
//! matches a documented path but whose method is not documented for it is
//! answered 405 with an `Allow` header built from the document, before any
//! route runs; the same table names the route of each request in the
//! metrics. Tests check that every route's doc line is documented and every
//! documented path is served, so the two cannot drift apart unnoticed.

pub mod docs;

use crate::error::ApiError;
use serde_json::Value;
use std::sync::LazyLock;
use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");
pub const ASYNCAPI_YAML: &str = include_str!("asyncapi.yaml");

/// A document as JSON text, converted once.
fn json_of(yaml: &str, name: &str) -> String {
    let value: Value = serde_yaml::from_str(yaml)
        .unwrap_or_else(|e| panic!("{name} is not valid YAML (a test checks this): {e}"));
    value.to_string()
}

static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| json_of(OPENAPI_YAML, "openapi.yaml"));
static ASYNCAPI_JSON: LazyLock<String> = LazyLock::new(|| json_of(ASYNCAPI_YAML, "asyncapi.yaml"));

/// One documented path: its template (`/api/v1/chats/{id}`), split into
/// segments, and its methods.
#[derive(Debug)]
pub struct Route {
    pub template: String,
    segments: Vec<Segment>,
    pub methods: Vec<Method>,
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
}

impl Route {
    /// How many literal segments match `path`'s; `None` when it does not match.
    fn score(&self, path: &[&str]) -> Option<usize> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut literals = 0;
        for (segment, part) in self.segments.iter().zip(path) {
            match segment {
                Segment::Literal(text) if text == part => literals += 1,
                Segment::Literal(_) => return None,
                Segment::Param if part.is_empty() => return None,
                Segment::Param => {}
            }
        }
        Some(literals)
    }

    /// The `Allow` header's value: the documented methods, HEAD wherever
    /// GET is (the server answers it as GET without the body), and OPTIONS.
    pub fn allow(&self) -> String {
        let mut names = Vec::new();
        for method in &self.methods {
            names.push(method.as_str());
            if method == Method::GET {
                names.push("HEAD");
            }
        }
        names.push("OPTIONS");
        names.join(", ")
    }
}

/// Every documented path.
pub static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let doc: Value = serde_yaml::from_str(OPENAPI_YAML).expect("openapi.yaml parses");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    paths
        .into_iter()
        .map(|(template, item)| {
            let methods = item
                .as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .filter_map(|key| match key.as_str() {
                    "get" => Some(Method::GET),
                    "put" => Some(Method::PUT),
                    "post" => Some(Method::POST),
                    "delete" => Some(Method::DELETE),
                    "patch" => Some(Method::PATCH),
                    // `parameters`, `summary` and the like.
                    _ => None,
                })
                .collect();
            let segments = template
                .trim_start_matches('/')
                .split('/')
                .map(|s| {
                    if s.starts_with('{') && s.ends_with('}') {
                        Segment::Param
                    } else {
                        Segment::Literal(s.to_string())
                    }
                })
                .collect();
            Route {
                template,
                segments,
                methods,
            }
        })
        .collect()
});

/// [`ROUTES`] by their number of segments: a path is compared with the few
/// of its length only (every request is routed twice: for the method check
/// and for the metrics).
static ROUTES_BY_LENGTH: LazyLock<Vec<Vec<&'static Route>>> = LazyLock::new(|| {
    let mut by_length: Vec<Vec<&'static Route>> = Vec::new();
    for route in ROUTES.iter() {
        let n = route.segments.len();
        if by_length.len() <= n {
            by_length.resize_with(n + 1, Vec::new);
        }
        by_length[n].push(route);
    }
    by_length
});

/// The longest path, in segments, any route has.
const MAX_SEGMENTS: usize = 8;

/// The documented path `path` falls under, the most literal one if several do.
pub fn route_of(path: &str) -> Option<&'static Route> {
    let mut parts = [""; MAX_SEGMENTS];
    let mut n = 0;
    for part in path.trim_start_matches('/').split('/') {
        *parts.get_mut(n)? = part;
        n += 1;
    }
    let parts = &parts[..n];
    ROUTES_BY_LENGTH
        .get(n)?
        .iter()
        .filter_map(|route| route.score(parts).map(|score| (score, *route)))
        .max_by_key(|(score, _)| *score)
        .map(|(_, route)| route)
}

/// The route a request was matched to before routing (`server` puts it in
/// the request's extensions), so the routes need not match it again.
#[derive(Clone, Copy)]
pub struct Matched(pub Option<&'static Route>);

fn matched(path: &FullPath, known: Option<Matched>) -> Option<&'static Route> {
    match known {
        Some(Matched(route)) => route,
        None => route_of(path.as_str()),
    }
}

/// Refuses a documented path with an undocumented method (405 and `Allow`)
/// and a documented path with a trailing slash (404: another path, which
/// warp would otherwise serve as the documented one); lets everything else
/// through to the routes.
pub fn methods_guard() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::method())
        .and(warp::ext::optional::<Matched>())
        .and_then(
            |path: FullPath, method: Method, known: Option<Matched>| async move {
                let text = path.as_str();
                if text.len() > 1 && text.ends_with('/') {
                    return Err(warp::reject::custom(ApiError::RouteNotFound));
                }
                match matched(&path, known) {
                    Some(route)
                        if method != Method::OPTIONS && !route.methods.contains(&method) =>
                    {
                        Err(warp::reject::custom(ApiError::MethodNotAllowed {
                            allow: route.allow(),
                        }))
                    }
                    _ => Ok(()),
                }
            },
        )
        .untuple_one()
}

/// OPTIONS on any documented path: 204 with its `Allow`. (A CORS preflight
/// never gets here: the CORS filter answers it.)
pub fn options() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::options()
        .and(warp::path::full())
        .and_then(|path: FullPath| async move {
            let route = route_of(path.as_str()).ok_or_else(warp::reject::not_found)?;
            let mut response = Response::new(Default::default());
            *response.status_mut() = StatusCode::NO_CONTENT;
            let allow = warp::http::HeaderValue::from_str(&route.allow())
                .map_err(|_| warp::reject::not_found())?;
            response
                .headers_mut()
                .insert(warp::http::header::ALLOW, allow);
            Ok::<_, Rejection>(response)
        })
}

/// GET /api/v1/openapi.json
pub fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| json_document(&OPENAPI_JSON))
}

/// GET /api/v1/asyncapi.json
pub fn asyncapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "asyncapi.json")
        .and(warp::get())
        .map(|| json_document(&ASYNCAPI_JSON))
}

fn json_document(text: &str) -> Response {
    let mut response = Response::new(text.to_string().into());
    let headers = response.headers_mut();
    headers.insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-cache"),
    );
    *response.status_mut() = StatusCode::OK;
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `METHOD /path/{}/...` for every route filter's `/// METHOD /path` doc
    /// line under `src/`, parameters written `{}` and the query left out.
    fn served_routes() -> BTreeSet<String> {
        fn walk(dir: &Path, out: &mut BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let Some(doc) = line.trim().strip_prefix("/// ") else {
                        continue;
                    };
                    let Some((method, target)) = doc.split_once(' ') else {
                        continue;
                    };
                    let known = ["GET", "POST", "PUT", "DELETE", "PATCH"];
                    if !known.contains(&method) || !target.starts_with('/') {
                        continue;
                    }
                    let path = target.split('?').next().unwrap();
                    out.insert(format!("{method} {}", shape(path, ':')));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    /// A path with its parameters (`:id` or `{id}`) written `{}`.
    fn shape(path: &str, param: char) -> String {
        path.split('/')
            .map(|s| if s.starts_with(param) { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn documented_routes() -> BTreeSet<String> {
        ROUTES
            .iter()
            .flat_map(|r| {
                r.methods
                    .iter()
                    .map(|m| format!("{m} {}", shape(&r.template, '{')))
            })
            .collect()
    }

    #[test]
    fn every_route_served_is_documented_and_every_documented_route_is_served() {
        let served = served_routes();
        let documented = documented_routes();
        let undocumented: Vec<&String> = served.difference(&documented).collect();
        let unserved: Vec<&String> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not served: {unserved:?}"
        );
    }

    /// The `code` strings an enum's source gives between `start` and `end`.
    fn codes_in(file: &str, start: &str, end: &str) -> BTreeSet<String> {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let body = &text[text.find(start).unwrap()..];
        let body = &body[..body[start.len()..]
            .find(end)
            .map_or(body.len(), |i| i + start.len())];
        body.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_string)
            .collect()
    }

    fn enum_at(doc: &Value, pointer: &str) -> BTreeSet<String> {
        doc.pointer(pointer)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("no enum at {pointer}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn every_error_code_is_documented() {
        let doc: Value = serde_json::from_str(&OPENAPI_JSON).unwrap();
        let documented = enum_at(&doc, "/components/schemas/Error/properties/code/enum");
        let codes = codes_in(
            "src/error.rs",
            "pub fn code(&self)",
            "pub fn message(&self)",
        );
        let missing: Vec<&String> = codes.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "codes missing from openapi.yaml: {missing:?}"
        );
    }

    #[test]
    fn both_documents_are_json_objects() {
        for text in [OPENAPI_JSON.as_str(), ASYNCAPI_JSON.as_str()] {
            let doc: Value = serde_json::from_str(text).unwrap();
            assert!(doc.is_object());
        }
    }

    #[test]
    fn a_path_finds_its_most_literal_template() {
        let route = |p: &str| route_of(p).map(|r| r.template.as_str());
        assert_eq!(route("/api/v1/chats/7"), Some("/api/v1/chats/{id}"));
        assert_eq!(
            route("/api/v1/chats/7/members/9"),
            Some("/api/v1/chats/{id}/members/{memberId}")
        );
        assert_eq!(
            route("/api/v1/users/last-seen"),
            Some("/api/v1/users/last-seen")
        );
        assert_eq!(
            route("/api/v1/messages/chat/3"),
            Some("/api/v1/messages/chat/{chatId}")
        );
        assert_eq!(route("/api/v1/chats/"), None, "an empty id is no id");
        assert_eq!(route("/nowhere"), None);
        assert_eq!(route("/a/b/c/d/e/f/g/h/i/j"), None);
        for documented in ROUTES.iter() {
            let path = documented.template.replace(['{', '}'], "");
            assert_eq!(route(&path), Some(documented.template.as_str()), "{path}");
        }
    }
}
