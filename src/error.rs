//! The one error type of the API and the one place that turns errors —
//! ours and warp's own rejections — into the JSON envelope
//! `{"error", "code", "fields"?}`.

use serde::Serialize;
use std::convert::Infallible;
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

#[derive(Debug, Clone)]
pub enum ApiError {
    /// One or more request fields are invalid.
    Validation(Vec<FieldError>),
    /// The request could not be understood at all (bad JSON, bad path id, ...).
    BadRequest {
        code: &'static str,
        message: String,
    },
    /// Missing, malformed, expired or revoked token.
    Unauthorized(&'static str),
    InvalidCredentials,
    /// The chat or message does not exist *or the caller may not see it*.
    NotFound(&'static str),
    NotChatAdmin,
    NotChatCreator,
    NotMessageSender,
    NotYourAccount,
    /// A rule of the chat forbids the action (e.g. adding members to a DM).
    Forbidden(&'static str),
    UsernameTaken,
    Conflict {
        code: &'static str,
        message: String,
    },
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    DatabaseUnavailable,
    /// Anything else. The cause is logged, never sent.
    Internal(String),
}

impl warp::reject::Reject for ApiError {}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Internal(cause) => write!(f, "internal error: {cause}"),
            other => write!(f, "{} ({})", other.message(), other.code()),
        }
    }
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Validation(_) | BadRequest { .. } => StatusCode::BAD_REQUEST,
            Unauthorized(_) | InvalidCredentials => StatusCode::UNAUTHORIZED,
            NotChatAdmin | NotChatCreator | NotMessageSender | NotYourAccount | Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UsernameTaken | Conflict { .. } => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Validation(_) => "validation_failed",
            BadRequest { code, .. } | Conflict { code, .. } => code,
            Unauthorized(_) => "unauthorized",
            InvalidCredentials => "invalid_credentials",
            NotFound(_) => "not_found",
            NotChatAdmin => "not_chat_admin",
            NotChatCreator => "not_chat_creator",
            NotMessageSender => "not_message_sender",
            NotYourAccount => "not_your_account",
            Forbidden(_) => "forbidden",
            UsernameTaken => "username_taken",
            MethodNotAllowed => "method_not_allowed",
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
            BadRequest { message, .. } | Conflict { message, .. } => message.clone(),
            Unauthorized(why) => (*why).into(),
            InvalidCredentials => "invalid credentials".into(),
            NotFound(what) => format!("{what} not found"),
            NotChatAdmin => "only chat admins may do this".into(),
            NotChatCreator => "only the chat's creator may delete it".into(),
            NotMessageSender => "only the sender may do this to a message".into(),
            NotYourAccount => "you may only change your own account".into(),
            Forbidden(why) => (*why).into(),
            UsernameTaken => "username is already taken".into(),
            MethodNotAllowed => "method not allowed".into(),
            PayloadTooLarge => "request body is too large".into(),
            UnsupportedMediaType => "unsupported content type".into(),
            DatabaseUnavailable => "database unavailable, try again shortly".into(),
            Internal(_) => "internal server error".into(),
        }
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
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => log::error!("internal error: {cause}"),
            ApiError::DatabaseUnavailable => log::warn!("database unavailable"),
            _ => {}
        }
        let status = self.status();
        warp::reply::with_status(warp::reply::json(&self.body()), status).into_response()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_connection_error(&e) {
            log::warn!("database connection error: {e}");
            return ApiError::DatabaseUnavailable;
        }
        // Client text PostgreSQL cannot store (a NUL character) is bad input, not a 500.
        if e.code() == Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE) {
            return ApiError::bad_request("invalid_text", "text must not contain NUL characters");
        }
        ApiError::Internal(format!("database error: {e:?}"))
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for ApiError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        match e {
            bb8::RunError::User(e) => {
                // The pool only returns user errors while connecting.
                log::warn!("cannot connect to the database: {e}");
                ApiError::DatabaseUnavailable
            }
            bb8::RunError::TimedOut => ApiError::DatabaseUnavailable,
        }
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
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
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

/// Maps every rejection — ours and warp's — to the JSON envelope.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType};
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::NotFound("route")
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request("invalid_body", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request("invalid_query", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request("invalid_header", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request("missing_header", e.to_string())
    } else if rejection
        .find::<warp::filters::cors::CorsForbidden>()
        .is_some()
    {
        ApiError::Forbidden("CORS request not allowed for this origin")
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if let Some(crate::http::InvalidId(e)) = rejection.find() {
        e.clone()
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::bad_request("length_required", "a Content-Length header is required")
    } else {
        ApiError::Internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}
