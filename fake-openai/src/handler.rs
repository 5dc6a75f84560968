//! One request, top to bottom: route → record → hang? → latency → auth →
//! injected failure → OpenAI reply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use crate::body::{FakeBody, SseBody};
use crate::config::FakeMode;
use crate::openai::{self, EmbeddingsRequest, GenerateRequest, Reply};
use crate::state::{Active, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Models,
    Chat,
    Completions,
    Embeddings,
    Responses,
    /// A POST on another `/v1/*` path: counted and recorded, then 404.
    OtherPost,
    /// A known path with the wrong method.
    WrongMethod,
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Self {
        let known = match path {
            "/v1/models" => Some((Method::GET, Self::Models)),
            "/v1/chat/completions" => Some((Method::POST, Self::Chat)),
            "/v1/completions" => Some((Method::POST, Self::Completions)),
            "/v1/embeddings" => Some((Method::POST, Self::Embeddings)),
            "/v1/responses" => Some((Method::POST, Self::Responses)),
            _ => None,
        };
        match known {
            Some((expected, route)) if *method == expected => route,
            Some(_) => Self::WrongMethod,
            None if *method == Method::POST && path.starts_with("/v1/") => Self::OtherPost,
            None => Self::NotFound,
        }
    }

    fn is_counted_post(self) -> bool {
        !matches!(self, Self::Models | Self::WrongMethod | Self::NotFound)
    }
}

pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<FakeBody> {
    let route = Route::of(req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let body = if route.is_counted_post() {
        let Ok(collected) = body.collect().await else {
            return error(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
                None,
            );
        };
        let body = collected.to_bytes();
        let authorization = parts
            .headers
            .get(AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        shared.record_post(parts.uri.path(), authorization, body.clone());
        body
    } else {
        if route == Route::Models {
            shared.record_models();
        }
        Bytes::new()
    };

    let active = shared.active();
    let config = &active.config;
    if config.mode == FakeMode::Hang {
        return std::future::pending().await;
    }
    sleep(config.latency).await;

    if !active.authorized(parts.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            Some("invalid_api_key"),
        );
    }
    match (config.mode, route) {
        (_, route) if config.habits.redirect && route.is_counted_post() => {
            let host = parts.headers.get(hyper::header::HOST).cloned();
            let mut response = error(StatusCode::TEMPORARY_REDIRECT, "redirect", None);
            if let Some(host) = host.and_then(|h| h.to_str().ok().map(str::to_owned)) {
                let location = format!("http://{host}{}/", parts.uri.path());
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response
                        .headers_mut()
                        .insert(hyper::header::LOCATION, value);
                }
            }
            return response;
        }
        (_, Route::Models) if config.habits.no_models => {
            return error(StatusCode::NOT_FOUND, "not found", None)
        }
        (_, Route::WrongMethod) => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None)
        }
        (_, Route::NotFound) => return error(StatusCode::NOT_FOUND, "not found", None),
        (FakeMode::Status(code), _) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = error(
                status,
                &format!("fake-openai: injected status {code}"),
                None,
            );
            if let Some(seconds) = config.habits.retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            return response;
        }
        (FakeMode::FailModels, Route::Models) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fake-openai: injected model listing failure",
                None,
            )
        }
        _ => {}
    }

    match route {
        Route::Models => json(StatusCode::OK, active.models_body.clone()),
        Route::Chat | Route::Completions | Route::Responses => {
            generate(shared, &active, route, &body).await
        }
        Route::Embeddings => embeddings(&active, &body),
        Route::OtherPost | Route::WrongMethod | Route::NotFound => {
            error(StatusCode::NOT_FOUND, "not found", None)
        }
    }
}

/// Chat completions, completions and responses.
async fn generate(
    shared: &Shared,
    active: &Active,
    route: Route,
    body: &[u8],
) -> Response<FakeBody> {
    let req: GenerateRequest<'_> = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return unparsable(&e),
    };
    let model = match find_model(active, req.model.as_deref()) {
        Ok(model) => model,
        Err(response) => return *response,
    };
    let config = &active.config;
    let stream = req.stream == Some(true);
    if config.mode == FakeMode::MalformedJson {
        return malformed(stream);
    }
    let requested = match route {
        Route::Chat => req.max_completion_tokens.or(req.max_tokens),
        Route::Completions => req.max_tokens,
        _ => req.max_output_tokens,
    };
    let tokens = requested.unwrap_or(config.tokens);
    let reply = Reply {
        id: shared.next_id(),
        created: unix_now(),
        model,
        prompt_tokens: config.prompt_tokens,
        completion_tokens: tokens,
    };

    if stream {
        let include_usage = req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let habits = &config.habits;
        let interval = config.token_interval;
        let (head, token, mut tail) = match route {
            Route::Chat => {
                let frames = openai::chat_stream(&reply, include_usage, habits.usage_in_choice);
                (None, frames.token, frames.tail)
            }
            Route::Completions => {
                let frames =
                    openai::completion_stream(&reply, include_usage, habits.usage_in_choice);
                (None, frames.token, frames.tail)
            }
            _ => {
                let (created, delta, completed) = openai::response_stream(&reply);
                (Some(created), delta, vec![completed])
            }
        };
        // A server dying mid-stream sends neither the finish chunk nor the
        // terminal event.
        let sent = match habits.truncate_after {
            Some(limit) => {
                tail.clear();
                tokens.min(limit)
            }
            None => tokens,
        };
        let body = SseBody::new(head, token, sent, interval, tail).with_habits(habits);
        return sse(FakeBody::Sse(body));
    }

    sleep(config.token_interval.saturating_mul(tokens)).await;
    let body = match route {
        Route::Chat => openai::chat_completion(&reply),
        Route::Completions => openai::completion(&reply),
        _ => openai::response(&reply),
    };
    json(StatusCode::OK, body)
}

fn embeddings(active: &Active, body: &[u8]) -> Response<FakeBody> {
    let req: EmbeddingsRequest<'_> = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return unparsable(&e),
    };
    let model = match find_model(active, req.model.as_deref()) {
        Ok(model) => model,
        Err(response) => return *response,
    };
    if active.config.mode == FakeMode::MalformedJson {
        return malformed(false);
    }
    let body = openai::embeddings(model, req.input_count(), active.config.prompt_tokens);
    json(StatusCode::OK, body)
}

/// The JSON-encoded id of a served model, or the OpenAI error reply.
fn find_model<'a>(
    active: &'a Active,
    model: Option<&str>,
) -> Result<&'a str, Box<Response<FakeBody>>> {
    let Some(model) = model else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            None,
        )));
    };
    active.model_json(model).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            Some("model_not_found"),
        ))
    })
}

// === Responses ===

fn json(status: StatusCode, body: Bytes) -> Response<FakeBody> {
    let mut response = Response::new(FakeBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn sse(body: FakeBody) -> Response<FakeBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An OpenAI error reply; the `type` follows the status class.
fn error(status: StatusCode, message: &str, code: Option<&str>) -> Response<FakeBody> {
    let kind = match status.as_u16() {
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json(status, openai::error_body(message, kind, code))
}

fn unparsable(e: &serde_json::Error) -> Response<FakeBody> {
    error(
        StatusCode::BAD_REQUEST,
        &format!("We could not parse the JSON body of your request: {e}"),
        None,
    )
}

fn malformed(stream: bool) -> Response<FakeBody> {
    if !stream {
        return json(StatusCode::OK, Bytes::from_static(openai::MALFORMED_JSON));
    }
    let frames = openai::MALFORMED_SSE
        .iter()
        .map(|f| Bytes::from_static(f))
        .collect();
    sse(FakeBody::Sse(SseBody::new(
        None,
        Bytes::new(),
        0,
        Duration::ZERO,
        frames,
    )))
}

// === Helpers ===

async fn sleep(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of(&Method::GET, "/v1/models"), Route::Models);
        assert_eq!(Route::of(&Method::POST, "/v1/models"), Route::WrongMethod);
        assert_eq!(
            Route::of(&Method::POST, "/v1/chat/completions"),
            Route::Chat
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1/chat/completions"),
            Route::WrongMethod
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/audio/speech"),
            Route::OtherPost
        );
        assert_eq!(Route::of(&Method::GET, "/"), Route::NotFound);
        assert!(Route::OtherPost.is_counted_post());
        assert!(!Route::Models.is_counted_post());
    }
}
