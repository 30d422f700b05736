//! The one error type of the API and the one place that turns errors —
//! ours and warp's own rejections — into the JSON envelope
//! `{"error", "code", "fields"?}`.

use serde::Serialize;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A cause kept for the log: shared so the error stays `Clone` (warp hands
/// rejections out by reference).
pub type Cause = Arc<dyn StdError + Send + Sync>;

#[derive(Debug, Clone)]
pub enum ApiError {
    /// One or more request fields are invalid.
    Validation(Vec<FieldError>),
    /// The body is not JSON (or form) of the expected shape.
    InvalidBody(String),
    InvalidQuery(String),
    InvalidHeader(String),
    MissingHeader(String),
    /// A path id that is not a positive integer.
    InvalidId(String),
    /// Text PostgreSQL cannot store (a NUL character).
    InvalidText,
    NotAGroup,
    /// `reply_to_id` names no message of the chat the message is sent to.
    InvalidReply,
    /// A reaction's path segment is neither one emoji nor a `:shortcode:`.
    InvalidEmoji,
    UpgradeRequired,
    LengthRequired,
    /// Missing, malformed, expired or revoked token.
    Unauthorized(&'static str),
    InvalidCredentials,
    NotChatAdmin,
    NotChatCreator,
    NotMessageSender,
    NotYourAccount,
    /// The user named has blocked the caller.
    Blocked,
    CorsForbidden,
    /// The chat does not exist *or the caller is not a member*: ids cannot be probed.
    ChatNotFound,
    /// The message does not exist or is in a chat the caller is not in.
    MessageNotFound,
    UserNotFound,
    /// The user named in the path is not a member of the chat.
    MemberNotFound,
    RouteNotFound,
    /// A documented path with another method; `allow` lists its methods.
    MethodNotAllowed {
        allow: String,
    },
    UsernameTaken,
    /// Demoting the chat's last admin.
    LastAdmin,
    /// A client_id already used for a message in another chat.
    ClientIdReused,
    /// A group at `limits.group_members`.
    ChatFull,
    /// A new emoji on a message that carries `max` already.
    TooManyReactions {
        max: i64,
    },
    /// A pin in a chat that holds `max` already.
    TooManyPins {
        max: i64,
    },
    /// A statement ran past `database.statement_timeout_ms`.
    QueryTimeout,
    /// The user already holds `limits.sockets_per_user` WebSockets on this node.
    TooManySockets,
    /// Over a rate limit (see `limits`): try again after `retry_after`.
    RateLimited {
        retry_after: std::time::Duration,
    },
    /// The password-hashing queue is full: try again after `retry_after`.
    Busy {
        retry_after: std::time::Duration,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    DatabaseUnavailable,
    /// Anything else: a bug. Logged with its causes, never shown.
    Internal(Cause),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    /// An unexpected failure, keeping `cause` for the log.
    pub fn internal(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        ApiError::Internal(Arc::from(cause.into()))
    }

    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Validation(_) | InvalidBody(_) | InvalidQuery(_) | InvalidHeader(_)
            | MissingHeader(_) | InvalidId(_) | InvalidText | NotAGroup | InvalidReply
            | InvalidEmoji | UpgradeRequired | LengthRequired => StatusCode::BAD_REQUEST,
            Unauthorized(_) | InvalidCredentials => StatusCode::UNAUTHORIZED,
            NotChatAdmin | NotChatCreator | NotMessageSender | NotYourAccount | Blocked
            | CorsForbidden => StatusCode::FORBIDDEN,
            ChatNotFound | MessageNotFound | UserNotFound | MemberNotFound | RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            UsernameTaken
            | LastAdmin
            | ClientIdReused
            | ChatFull
            | TooManyReactions { .. }
            | TooManyPins { .. } => StatusCode::CONFLICT,
            TooManySockets | RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DatabaseUnavailable | QueryTimeout | Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Validation(_) => "validation_failed",
            InvalidBody(_) => "invalid_body",
            InvalidQuery(_) => "invalid_query",
            InvalidHeader(_) => "invalid_header",
            MissingHeader(_) => "missing_header",
            InvalidId(_) => "invalid_id",
            InvalidText => "invalid_text",
            NotAGroup => "not_a_group",
            InvalidReply => "invalid_reply",
            InvalidEmoji => "invalid_emoji",
            UpgradeRequired => "upgrade_required",
            LengthRequired => "length_required",
            Unauthorized(_) => "unauthorized",
            InvalidCredentials => "invalid_credentials",
            NotChatAdmin => "not_chat_admin",
            NotChatCreator => "not_chat_creator",
            NotMessageSender => "not_message_sender",
            NotYourAccount => "not_your_account",
            Blocked => "blocked",
            CorsForbidden => "forbidden",
            ChatNotFound | MessageNotFound | UserNotFound | MemberNotFound | RouteNotFound => {
                "not_found"
            }
            MethodNotAllowed { .. } => "method_not_allowed",
            UsernameTaken => "username_taken",
            LastAdmin => "last_admin",
            ClientIdReused => "client_id_reused",
            ChatFull => "chat_full",
            TooManyReactions { .. } => "too_many_reactions",
            TooManyPins { .. } => "too_many_pins",
            QueryTimeout => "query_timeout",
            TooManySockets => "too_many_sockets",
            RateLimited { .. } => "rate_limited",
            Busy { .. } => "busy",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            DatabaseUnavailable => "database_unavailable",
            Internal(_) => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        use ApiError::*;
        match self {
            Validation(fields) => match fields.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                _ => "request validation failed".into(),
            },
            InvalidBody(why) | InvalidQuery(why) | InvalidHeader(why) | MissingHeader(why) => {
                why.clone()
            }
            InvalidId(raw) => format!("`{raw}` is not a valid id (a positive integer)"),
            InvalidText => "text must not contain NUL characters".into(),
            NotAGroup => "members can only be added to group chats".into(),
            InvalidReply => "reply_to_id: must name a message of this chat".into(),
            InvalidEmoji => {
                "emoji: must be one emoji, or a :shortcode: of 1 to 32 of a-z 0-9 _ + -".into()
            }
            UpgradeRequired => "this endpoint needs a WebSocket upgrade (version 13)".into(),
            LengthRequired => "a Content-Length header is required".into(),
            Unauthorized(why) => (*why).into(),
            InvalidCredentials => "invalid credentials".into(),
            NotChatAdmin => "only chat admins may do this".into(),
            NotChatCreator => "only the chat's creator may delete it".into(),
            NotMessageSender => "only the sender may do this to a message".into(),
            NotYourAccount => "you may only change your own account".into(),
            Blocked => "a user named has blocked you".into(),
            CorsForbidden => "CORS request not allowed for this origin".into(),
            ChatNotFound => "chat not found".into(),
            MessageNotFound => "message not found".into(),
            UserNotFound => "user not found".into(),
            MemberNotFound => "member not found".into(),
            RouteNotFound => "route not found".into(),
            MethodNotAllowed { .. } => "method not allowed".into(),
            UsernameTaken => "username is already taken".into(),
            LastAdmin => "a chat must keep at least one admin".into(),
            ClientIdReused => {
                "this client_id was already used for a message in another chat".into()
            }
            ChatFull => "the group has as many members as it may have".into(),
            TooManyReactions { max } => {
                format!("a message carries at most {max} different reactions")
            }
            TooManyPins { max } => format!("a chat holds at most {max} pinned messages"),
            QueryTimeout => "the request took too long; try again or narrow it".into(),
            TooManySockets => "too many open connections for this user".into(),
            RateLimited { .. } => format!(
                "too many requests; try again in {} ms",
                self.retry_after_ms().unwrap_or(1)
            ),
            Busy { .. } => "the server is busy; try again shortly".into(),
            PayloadTooLarge => "request body is too large".into(),
            UnsupportedMediaType => "unsupported content type".into(),
            DatabaseUnavailable => "database unavailable, try again shortly".into(),
            Internal(_) => "internal server error".into(),
        }
    }

    /// When to try again, for errors that say so (429, 503 busy).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ApiError::RateLimited { retry_after } | ApiError::Busy { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// [`Self::retry_after`] in whole milliseconds, rounded up: waiting
    /// that long is always enough, and never 0.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.retry_after()
            .map(|d| (d.as_nanos().div_ceil(1_000_000) as u64).max(1))
    }

    /// The error as the JSON body sent to clients (also used in WebSocket `error` frames).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message(),
            code: self.code(),
            fields: match self {
                ApiError::Validation(f) => Some(f.clone()),
                _ => None,
            },
            request_id: crate::support::request_id(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Internal(_) => f.write_str("internal error"),
            other => write!(f, "{} ({})", other.message(), other.code()),
        }
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ApiError::Internal(cause) => Some(&**cause),
            _ => None,
        }
    }
}

/// `error` and each of its sources, joined with ": " — a 500's log line.
pub fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
    /// The request's `X-Request-Id`, to quote when reporting the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(_) => log::error!("{}", chain(&self)),
            ApiError::DatabaseUnavailable => log::warn!("database unavailable"),
            _ => {}
        }
        let status = self.status();
        let mut response =
            warp::reply::with_status(warp::reply::json(&self.body()), status).into_response();
        if let ApiError::MethodNotAllowed { allow } = &self
            && let Ok(value) = warp::http::HeaderValue::from_str(allow)
            && !allow.is_empty()
        {
            response
                .headers_mut()
                .insert(warp::http::header::ALLOW, value);
        }
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: a client must not come back early.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from(secs.max(1)),
            );
        }
        response
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_connection_error(&e) {
            log::warn!("database connection error: {}", chain(&e));
            return ApiError::DatabaseUnavailable;
        }
        // Client text PostgreSQL cannot store (a NUL character) is bad input, not a 500.
        if e.code() == Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE) {
            return ApiError::InvalidText;
        }
        // statement_timeout: the request asked for too much work; a cancel for
        // any other reason is unexpected, hence the message test.
        if let Some(db) = e.as_db_error()
            && *db.code() == tokio_postgres::error::SqlState::QUERY_CANCELED
            && db.message().contains("statement timeout")
        {
            log::warn!("{}", chain(&e));
            return ApiError::QueryTimeout;
        }
        ApiError::Internal(Arc::new(e))
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for ApiError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        match e {
            bb8::RunError::User(e) => {
                // The pool only returns user errors while connecting.
                log::warn!("cannot connect to the database: {}", chain(&e));
                ApiError::DatabaseUnavailable
            }
            bb8::RunError::TimedOut => ApiError::DatabaseUnavailable,
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Internal(Arc::new(e))
    }
}

/// True when the error means "no usable connection", as opposed to a query error.
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08 (connection exception), 57P01-57P03 (admin shutdown, crash, cannot connect now).
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03"
        }
        // No SQLSTATE: a broken socket is an outage; anything else (a type
        // conversion, a protocol surprise) is a bug and must surface as a 500.
        None => StdError::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// The name of the violated unique constraint, if that is what `e` is.
pub fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    if *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
        db.constraint()
    } else {
        None
    }
}

/// The rejection of a path id that did not parse. Kept apart from
/// [`ApiError`] so that a route that matched (e.g. `/users/last-seen`
/// answering 401) wins over a sibling `/users/:id` route that merely failed
/// to parse `last-seen` as an id: `recover` looks for `ApiError` first.
#[derive(Debug)]
pub struct InvalidId(pub ApiError);

impl warp::reject::Reject for InvalidId {}

/// Maps every rejection — ours and warp's — to the JSON envelope.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType};
    // A rejection combines those of every route tried: what a route said
    // about this request (ours, then warp's) wins over a route that merely
    // did not match it (its method, then its path).
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if let Some(InvalidId(e)) = rejection.find() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::RouteNotFound
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::InvalidBody(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidQuery(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::InvalidHeader(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::MissingHeader(e.to_string())
    } else if rejection
        .find::<warp::filters::cors::CorsForbidden>()
        .is_some()
    {
        ApiError::CorsForbidden
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        // Every documented path's methods were checked against the document
        // before routing (`contract::methods_guard`): this path is not one.
        ApiError::RouteNotFound
    } else {
        ApiError::internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_errors_log_line_shows_every_cause() {
        let io = std::io::Error::other("disk on fire");
        let error = ApiError::internal(io);

        assert_eq!(chain(&error), "internal error: disk on fire");
        assert_eq!(error.body().error, "internal server error", "never shown");
    }

    #[test]
    fn a_wait_under_a_millisecond_is_one_millisecond_in_the_frame_and_the_text() {
        for (wait, ms) in [(1_u64, 1), (999_999, 1), (1_000_000, 1), (1_000_001, 2)] {
            let error = ApiError::RateLimited {
                retry_after: std::time::Duration::from_nanos(wait),
            };

            assert_eq!(error.retry_after_ms(), Some(ms), "{wait} ns");
            assert!(
                error.message().contains(&format!("in {ms} ms")),
                "{wait} ns"
            );
        }
    }
}
