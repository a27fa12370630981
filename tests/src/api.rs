//! A small client of the REST API for tests: one tenant, JSON in and out, problem+json assertions.

use std::time::Duration;

use serde_json::Value;

/// A client of the API with one key (so for one tenant).
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// Status, headers and JSON body of an answer.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// JSON body (a string when it is not JSON).
    pub body: Value,
}

impl Reply {
    /// Assert a problem+json with this status whose detail and `invalid_params` (when given) name `field`.
    #[track_caller]
    pub fn problem(&self, status: u16, field: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(field),
            "detail should name {field}: {}",
            self.body
        );
        if let Some(params) = self.body["invalid_params"].as_array() {
            assert!(
                params.iter().any(|p| p["name"] == field),
                "invalid_params should name {field}: {}",
                self.body
            );
        }
    }
}

impl Api {
    /// A client of the API at `base` calling with `key`.
    pub fn new(base: &str, key: &str) -> Self {
        Api {
            key: key.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            base: base.to_owned(),
        }
    }

    /// Send a request with the key.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.bearer_auth(&self.key).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// GET with extra headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// POST a raw body as JSON.
    pub async fn post_raw(&self, path: &str, body: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// POST with an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, key: &str, body: Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("idempotency-key", key)
                .json(&body),
        )
        .await
    }

    /// POST that must succeed with `status` (read-your-writes: the answer is the materialized resource).
    pub async fn created(&self, path: &str, body: Value, status: u16) -> Value {
        let r = self.post(path, body).await;
        assert_eq!(r.status, status, "POST {path}: {}", r.body);
        r.body
    }
}

impl Api {
    /// Advance a test clock to `to` (RFC 3339) and wait until every partition has billed up to it.
    pub async fn advance_clock(&self, clock: &str, to: &str) {
        let r = self
            .post(
                &format!("/v1/test_clocks/{clock}/advance?wait_seconds=90"),
                serde_json::json!({"frozen_time": to}),
            )
            .await;
        assert_eq!(r.status, 200, "advance to {to}: {}", r.body);
        assert_eq!(r.body["status"], "ready");
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
}

/// Some fields of every row of a list answer (`data`), as strings (`null` for null, numbers as written).
pub fn columns(body: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|r| {
            fields
                .iter()
                .map(|f| match &r[*f] {
                    Value::String(s) => s.clone(),
                    Value::Null => "null".into(),
                    v => v.to_string(),
                })
                .collect()
        })
        .collect()
}

/// Expected rows, as [`columns`] gives them.
pub fn rows(want: &[&[&str]]) -> Vec<Vec<String>> {
    want.iter()
        .map(|r| r.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}
