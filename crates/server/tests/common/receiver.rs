//! A real HTTP peer recording what it receives (chat webhooks, Events API
//! senders, feeds): every POST is kept with its path and JSON body; `/fail`
//! always answers 500. Shared by the server's tests (`common::receiver`)
//! and the CLI's (`#[path]` to this file).
#![allow(dead_code)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1; returns it with its base URL.
    pub async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        async fn ok(State(r): State<Receiver>, uri: axum::http::Uri, body: String) -> StatusCode {
            r.got.lock().unwrap().push((uri.path().to_string(), serde_json::from_str(&body).unwrap_or(Value::Null)));
            StatusCode::OK
        }
        async fn fail() -> StatusCode {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        let app = Router::new().route("/fail", post(fail)).route("/{*path}", post(ok)).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    /// The bodies received at `path`.
    pub fn at(&self, path: &str) -> Vec<Value> {
        self.got.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, v)| v.clone()).collect()
    }

    /// Every path received, in order.
    pub fn paths(&self) -> Vec<String> {
        self.got.lock().unwrap().iter().map(|(p, _)| p.clone()).collect()
    }

    /// Every body received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().map(|(_, v)| v.clone()).collect()
    }
}
