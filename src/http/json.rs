//! Request bodies: JSON with errors that name the field and never repeat the value sent.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The whole request body, up to [`BODY_LIMIT`].
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }
        } else {
            ApiError::BadRequest("could not read the request body".into())
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.trim_ascii().is_empty() {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|err| ApiError::BadRequest(describe(&shorten(err.path()), err.inner())))?;
    deserializer
        .end()
        .map_err(|err| ApiError::BadRequest(describe(".", &err)))?;
    Ok(value)
}

/// The longest field path an error repeats, in characters: a path holds map keys the client
/// chose (feature or secret names), which may be as long as the body.
const MAX_PATH_CHARS: usize = 300;

fn shorten(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    match path.char_indices().nth(MAX_PATH_CHARS) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path,
    }
}

/// serde_json's message, without the value it quotes (which may be a secret).
fn describe(path: &str, err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!(
            "malformed JSON at line {} column {}",
            err.line(),
            err.column()
        ),
        Category::Data => {
            let message = err.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(head, _)| head);
            let message = match message.split_once(", expected ") {
                Some((_, expected)) => format!("wrong type, expected {expected}"),
                None => message.to_owned(),
            };
            if path == "." || message.starts_with("missing field") {
                message
            } else {
                format!("{path}: {message}")
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn message(body: &str) -> String {
        match parse_json::<Body>(body.as_bytes()).unwrap_err() {
            ApiError::BadRequest(message) => message,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_and_hide_the_value() {
        let text = message(r#"{"name": "x", "inner": {"count": "sk-secret"}}"#);
        assert_eq!(text, "inner.count: wrong type, expected u32");
        assert_eq!(message(r#"{"inner": null}"#), "missing field `name`");
        assert!(message(r#"{"name": "#).starts_with("malformed JSON"));
        assert_eq!(message(""), "request body must be a JSON object");
        assert!(message(r#"{"name": "x"} trailing"#).contains("malformed JSON"));
        let long = format!(r#"{{"{}": "x"}}"#, "k".repeat(10_000));
        let Err(ApiError::BadRequest(text)) =
            parse_json::<std::collections::BTreeMap<String, u32>>(long.as_bytes())
        else {
            panic!("expected 400");
        };
        assert!(text.chars().count() < 400, "{text}");
        assert!(
            text.starts_with("kkk") && text.contains("…: wrong type"),
            "{text}"
        );
    }
}
