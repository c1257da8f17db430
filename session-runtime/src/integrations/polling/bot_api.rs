//! The Bot API client of the poller: one JSON method call over HTTP, with the token kept
//! out of every error and log line.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// How long the HTTP client waits beyond the long-poll timeout before it gives up on a request.
pub(super) const NETWORK_GRACE: Duration = Duration::from_secs(10);

/// The Bot API over HTTP. The token is part of `base`, so request errors are logged without
/// their URL.
#[derive(Clone)]
pub(super) struct BotApi {
    pub(super) client: reqwest::Client,
    pub(super) base: String,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("token rejected ({code}): {description}")]
    Unauthorized { code: u16, description: String },
    #[error("{reason}")]
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// The Bot API's answer envelope.
#[derive(Deserialize)]
pub(super) struct Answer {
    ok: bool,
    result: Option<Box<RawValue>>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<AnswerParameters>,
}

#[derive(Deserialize)]
struct AnswerParameters {
    retry_after: Option<u64>,
}

impl BotApi {
    pub(super) async fn call(
        &self,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        // The whole chain of causes ("error sending request" alone says nothing), with the
        // URL, which holds the bot's token, left out.
        let retry = |error: reqwest::Error| {
            let error = error.without_url();
            let mut reason = format!("{method}: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                reason.push_str(": ");
                reason.push_str(&cause.to_string());
                source = cause.source();
            }
            CallError::Retry {
                reason: reason.replace(&*self.base, "<the Bot API URL>"),
                after: None,
            }
        };
        let response = self
            .client
            .post(format!("{}/{method}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(params.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(retry)?;
        let status = response.status();
        let body = response.bytes().await.map_err(retry)?;
        serde_json::from_slice(&body).map_err(|error| CallError::Retry {
            reason: format!("{method} answered {status} with no Bot API answer: {error}"),
            after: None,
        })
    }

    /// Sends a method set with [`Context::reply_with`](crate::Context::reply_with); a failure is logged, not retried.
    pub(super) async fn send_reply(&self, mut reply: serde_json::Value) {
        let method = match reply.as_object_mut().and_then(|o| o.remove("method")) {
            Some(serde_json::Value::String(method)) => method,
            _ => {
                tracing::error!(%reply, "a reply must be a JSON object with a \"method\" string");
                return;
            }
        };
        let sent = self
            .call(&method, &reply, NETWORK_GRACE)
            .await
            .and_then(parse_result::<Box<RawValue>>);
        if let Err(error) = sent {
            tracing::warn!(method, reason = %error, "the reply was not sent");
        }
    }
}

pub(super) fn parse_result<T: DeserializeOwned>(answer: Answer) -> Result<T, CallError> {
    if answer.ok {
        let result = answer.result.as_deref().map_or("null", RawValue::get);
        return serde_json::from_str(result).map_err(|error| CallError::Retry {
            reason: format!("unexpected result: {error}"),
            after: None,
        });
    }
    let code = answer.error_code.unwrap_or_default();
    let description = answer.description.unwrap_or_default();
    if matches!(code, 401 | 404) {
        return Err(CallError::Unauthorized { code, description });
    }
    Err(CallError::Retry {
        after: answer
            .parameters
            .and_then(|p| p.retry_after)
            .map(retry_after),
        reason: format!("{code}: {description}"),
    })
}

/// The longest pause a `retry_after` from the Bot API (or a proxy in front of it) imposes: a
/// larger one is taken as this, and logged, so a misbehaving peer cannot park the poller for
/// good.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// The pause a `retry_after` of `seconds` asks for, at most [`MAX_RETRY_AFTER`].
fn retry_after(seconds: u64) -> Duration {
    let asked = Duration::from_secs(seconds);
    if asked > MAX_RETRY_AFTER {
        tracing::warn!(
            retry_after = seconds,
            "the Bot API asked to wait longer than an hour before the next call; waiting an hour"
        );
        return MAX_RETRY_AFTER;
    }
    asked
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Answer, CallError, MAX_RETRY_AFTER, parse_result};

    fn retry_after_of(answer: &str) -> Option<Duration> {
        let answer: Answer = serde_json::from_str(answer).expect("an answer");
        match parse_result::<()>(answer) {
            Err(CallError::Retry { after, .. }) => after,
            other => panic!("not a retry: {other:?}"),
        }
    }

    fn flood(retry_after: &str) -> String {
        format!(
            r#"{{"ok":false,"error_code":429,"description":"Too Many Requests","parameters":{{"retry_after":{retry_after}}}}}"#
        )
    }

    #[test]
    fn a_retry_after_is_obeyed_up_to_an_hour() {
        assert_eq!(retry_after_of(&flood("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after_of(&flood("3600")), Some(MAX_RETRY_AFTER));
        // What a misbehaving API or proxy may send: an hour, never a panic or a wait for good.
        for absurd in [
            "3601",
            "1000000000000000000",
            "9223372036854775807",
            "18446744073709551615",
        ] {
            assert_eq!(
                retry_after_of(&flood(absurd)),
                Some(MAX_RETRY_AFTER),
                "{absurd}"
            );
        }
    }

    #[test]
    fn an_error_answer_without_a_retry_after_leaves_the_pause_to_the_backoff() {
        assert_eq!(
            retry_after_of(r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#),
            None
        );
        assert_eq!(
            retry_after_of(r#"{"ok":false,"error_code":429,"parameters":{}}"#),
            None
        );
    }
}
