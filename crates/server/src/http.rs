//! The HTTP listener (`--httpPort`): Prometheus metrics, and change streams as
//! Server-Sent Events for browsers and services that do not speak the wire protocol.
//!
//! - `GET /metrics`: the registry of [`commands::metrics`], in Prometheus' text format.
//! - `GET /v1/watch[/<db>[/<coll>]]?pipeline=[...]&fullDocument=...`: a change stream on the
//!   deployment, a database or a collection. Each event is an SSE message whose `id:` is
//!   its resume token, so a reconnecting `EventSource` resumes exactly through
//!   `Last-Event-ID` (the stream reopens with `startAfter`, which also carries on after an
//!   invalidate). While nothing happens, a `heartbeat` message carries the batch's
//!   `postBatchResumeToken` as its `id:`, so an idle stream's resume point keeps moving.
//!   The stream is opened and read with the very `aggregate` and `getMore` commands a
//!   driver sends, on a connection of its own: the same `$match` language, the same errors
//!   (as a JSON body with status 400, or 401/403 for access), the same privileges.
//!
//! With access control on, a request authenticates with HTTP Basic (`user:password`, on
//! `?authSource=` or `admin`), by running a SCRAM conversation with the server's own
//! `saslStart`/`saslContinue`. CORS: origins given with `--httpCorsOrigin` (or `*`) get
//! `Access-Control-Allow-Origin`; others get no CORS headers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bson::{Bson, Document, doc};
use bytes::Bytes;
use commands::{ConnInfo, ServerCtx};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The HTTP listener's settings.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Origins allowed to read responses from a browser (`*` for any).
    pub cors_origins: Vec<String>,
    /// How often an idle stream sends a heartbeat.
    pub heartbeat: Duration,
}

struct Shared {
    ctx: Arc<ServerCtx>,
    cfg: HttpConfig,
    registry: Registry,
}

/// Serves HTTP on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerCtx>, cfg: HttpConfig) {
    let registry = commands::metrics::registry(&ctx);
    let shared = Arc::new(Shared { ctx, cfg, registry });
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req, peer.to_string()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response body: all at once, or the events of a stream as they come.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => hyper::body::SizeHint::with_exact(0),
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    r
}

/// An error reply as MongoDB shapes it (`ok: 0`, `errmsg`, `code`, `codeName`), as JSON.
fn error_json(err: &Document) -> String {
    let mut d = doc! {"ok": 0.0};
    for k in ["errmsg", "code", "codeName"] {
        if let Some(v) = err.get(k) {
            d.insert(k, v.clone());
        }
    }
    Bson::Document(d).into_relaxed_extjson().to_string()
}

/// [`error_json`] as a response.
fn error_response(status: StatusCode, err: &Document) -> Response<Body> {
    respond(status, "application/json", error_json(err))
}

/// The status for a refused command: 401 unauthenticated, 403 not allowed, else 400.
fn status_for(err: &Document) -> StatusCode {
    match err.get_i32("code") {
        Ok(18) => StatusCode::UNAUTHORIZED,
        Ok(13) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn cors(cfg: &HttpConfig, req_headers: &HeaderMap, r: &mut Response<Body>) {
    let Some(origin) = req_headers.get(hyper::header::ORIGIN) else {
        return;
    };
    let allowed = cfg
        .cors_origins
        .iter()
        .any(|o| o == "*" || origin.to_str().is_ok_and(|s| s == o));
    if !allowed {
        return;
    }
    let h = r.headers_mut();
    h.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
}

async fn route(shared: &Shared, req: Request<Incoming>, peer: String) -> Response<Body> {
    let headers = req.headers().clone();
    let mut r = match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, _) => {
            let mut r = respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
            let h = r.headers_mut();
            h.insert(
                hyper::header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, OPTIONS"),
            );
            h.insert(
                hyper::header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Last-Event-ID, Cache-Control"),
            );
            h.insert(
                hyper::header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            r
        }
        (&Method::GET, "/metrics") => metrics(shared),
        (&Method::GET, path) if path == "/v1/watch" || path.starts_with("/v1/watch/") => {
            watch(shared, &req, peer).await
        }
        (&Method::GET, _) => error_response(
            StatusCode::NOT_FOUND,
            &doc! {"errmsg": format!("no such resource: {}", req.uri().path()), "code": 59, "codeName": "CommandNotFound"},
        ),
        _ => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &doc! {"errmsg": "only GET", "code": 2, "codeName": "BadValue"},
        ),
    };
    cors(&shared.cfg, &headers, &mut r);
    r
}

fn metrics(shared: &Shared) -> Response<Body> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &shared.registry) {
        Ok(()) => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        ),
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "cannot encode the metrics",
        ),
    }
}

/// Decodes `%XX` escapes and `+` in a query string component.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_params(q: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or_else(|| format!("bad escape in '{pair}'"))?;
        let v = percent_decode(v).ok_or_else(|| format!("bad escape in '{pair}'"))?;
        out.push((k, v));
    }
    Ok(out)
}

/// A resume token as an SSE id: its `_data` alone when that is all it holds, else its
/// canonical Extended JSON.
pub fn token_id(token: &Document) -> String {
    match (token.len(), token.get_str("_data")) {
        (1, Ok(d)) => d.to_string(),
        _ => Bson::Document(token.clone())
            .into_canonical_extjson()
            .to_string(),
    }
}

/// The token an SSE id stands for.
pub fn parse_token_id(id: &str) -> Option<Document> {
    let id = id.trim();
    if id.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(id).ok()?;
        match Bson::try_from(json).ok()? {
            Bson::Document(d) => Some(d),
            _ => None,
        }
    } else if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(doc! {"_data": id})
    } else {
        None
    }
}

fn bad(msg: impl Into<String>) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        &doc! {"errmsg": msg.into(), "code": 9, "codeName": "FailedToParse"},
    )
}

/// A connection of its own for one request, forgotten when dropped.
struct HttpConn {
    ctx: Arc<ServerCtx>,
    conn: ConnInfo,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.ctx.disconnect(&self.conn);
    }
}

impl HttpConn {
    /// Runs a command; a change stream's events stay as the server encoded them.
    async fn run_reply(&mut self, cmd: Document) -> commands::Reply {
        commands::handle(&self.ctx, &mut self.conn, cmd).await
    }

    async fn run(&mut self, cmd: Document) -> Document {
        // A change stream's events travel beside the reply as encoded bytes.
        commands::handle(&self.ctx, &mut self.conn, cmd)
            .await
            .full_doc()
            .into_owned()
    }
}

/// HTTP Basic credentials, proven to the server by a SCRAM conversation on `conn`.
async fn authenticate(
    conn: &mut HttpConn,
    headers: &HeaderMap,
    auth_db: &str,
) -> Result<(), Response<Body>> {
    let unauthenticated = |msg: &str| {
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            &doc! {"errmsg": msg, "code": 18, "codeName": "AuthenticationFailed"},
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"eddy\", charset=\"UTF-8\""),
        );
        r
    };
    let Some(h) = headers.get(hyper::header::AUTHORIZATION) else {
        return Err(unauthenticated(
            "access control is on: authenticate with HTTP Basic (user:password)",
        ));
    };
    let creds = h
        .to_str()
        .ok()
        .and_then(|s| s.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return Err(unauthenticated(
            "the Authorization header is not HTTP Basic user:password",
        ));
    };
    for mech in [auth::scram::Mechanism::Sha256, auth::scram::Mechanism::Sha1] {
        let (mut client, first) = auth::scram::Client::start(mech, user);
        let r = conn
            .run(doc! {
                "saslStart": 1,
                "mechanism": mech.name(),
                "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: first },
                "options": {"skipEmptyExchange": true},
                "$db": auth_db,
            })
            .await;
        if r.get_f64("ok") != Ok(1.0) {
            // The user may have credentials for the other mechanism only.
            if r.get_i32("code") == Ok(334) {
                continue;
            }
            return Err(unauthenticated("Authentication failed."));
        }
        let id = r.get_i32("conversationId").unwrap_or(1);
        let server_first = r.get_binary_generic("payload").cloned().unwrap_or_default();
        let Ok(proof) = client.respond(&server_first, password) else {
            return Err(unauthenticated("Authentication failed."));
        };
        let r = conn
            .run(doc! {
                "saslContinue": 1,
                "conversationId": id,
                "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: proof },
                "$db": auth_db,
            })
            .await;
        let server_final = r.get_binary_generic("payload").cloned().unwrap_or_default();
        if r.get_f64("ok") != Ok(1.0) || client.verify(&server_final).is_err() {
            return Err(unauthenticated("Authentication failed."));
        }
        if r.get_bool("done") != Ok(true) {
            let _ = conn
                .run(doc! {"saslContinue": 1, "conversationId": id, "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: Vec::new() }, "$db": auth_db})
                .await;
        }
        return Ok(());
    }
    Err(unauthenticated("Authentication failed."))
}

/// `GET /v1/watch...`: opens the stream and answers with its events as they come.
async fn watch(shared: &Shared, req: &Request<Incoming>, peer: String) -> Response<Body> {
    let path = req.uri().path().trim_start_matches("/v1/watch");
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| percent_decode(p).unwrap_or_default())
        .collect();
    if parts.len() > 2 || parts.iter().any(String::is_empty) {
        return bad("expected /v1/watch, /v1/watch/<db> or /v1/watch/<db>/<coll>");
    }
    let params = match query_params(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let mut spec = Document::new();
    let mut pipeline = Vec::new();
    let mut auth_db = "admin".to_string();
    let mut canonical = false;
    let mut batch_size = None;
    for (k, v) in &params {
        match k.as_str() {
            "pipeline" => {
                let parsed = serde_json::from_str::<serde_json::Value>(v)
                    .map_err(|e| format!("pipeline is not valid JSON: {e}"))
                    .and_then(|j| Bson::try_from(j).map_err(|e| format!("pipeline: {e}")));
                match parsed {
                    Ok(Bson::Array(stages)) => pipeline = stages,
                    Ok(Bson::Document(stage)) => pipeline = vec![Bson::Document(stage)],
                    Ok(_) => return bad("pipeline must be a JSON array of stages"),
                    Err(e) => return bad(e),
                }
            }
            "fullDocument" | "fullDocumentBeforeChange" => {
                spec.insert(k.clone(), v.clone());
            }
            "showExpandedEvents" => {
                spec.insert(k.clone(), v == "true" || v == "1");
            }
            "resumeAfter" | "startAfter" => match parse_token_id(v) {
                Some(t) => {
                    spec.insert(k.clone(), t);
                }
                None => return bad(format!("{k} is not a resume token")),
            },
            "startAtOperationTime" => {
                let (t, i) = v.split_once(',').unwrap_or((v, "0"));
                match (t.trim().parse::<u32>(), i.trim().parse::<u32>()) {
                    (Ok(time), Ok(increment)) => {
                        spec.insert(k.clone(), bson::Timestamp { time, increment });
                    }
                    _ => return bad("startAtOperationTime is SECONDS or SECONDS,INCREMENT"),
                }
            }
            "batchSize" => match v.parse::<i32>() {
                Ok(n) if n > 0 => batch_size = Some(n),
                _ => return bad("batchSize must be a positive integer"),
            },
            "format" => match v.as_str() {
                "relaxed" => canonical = false,
                "canonical" => canonical = true,
                _ => return bad("format is relaxed or canonical"),
            },
            "authSource" => auth_db = v.clone(),
            _ => return bad(format!("unknown parameter '{k}'")),
        }
    }
    // A reconnecting EventSource says where it was.
    if let Some(last) = req
        .headers()
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
    {
        if !last.is_empty() {
            let Some(t) = parse_token_id(last) else {
                return bad("Last-Event-ID is not a resume token");
            };
            spec.remove("resumeAfter");
            spec.remove("startAtOperationTime");
            spec.insert("startAfter", t);
        }
    }
    let ctx = shared.ctx.clone();
    let mut conn = HttpConn {
        conn: ctx.connect(peer),
        ctx: ctx.clone(),
    };
    if ctx.config.auth {
        if let Err(r) = authenticate(&mut conn, req.headers(), &auth_db).await {
            return r;
        }
    }
    let (db, target) = match parts.as_slice() {
        [] => {
            spec.insert("allChangesForCluster", true);
            ("admin".to_string(), Bson::Int32(1))
        }
        [db] => (db.clone(), Bson::Int32(1)),
        [db, coll] => (db.clone(), Bson::String(coll.clone())),
        _ => unreachable!("checked above"),
    };
    let mut stages = vec![Bson::Document(doc! {"$changeStream": spec})];
    stages.extend(pipeline);
    let mut cursor = Document::new();
    if let Some(n) = batch_size {
        cursor.insert("batchSize", n);
    }
    let reply = conn
        .run_reply(doc! {"aggregate": target, "pipeline": stages, "cursor": cursor, "$db": &db})
        .await;
    if reply.doc.get_f64("ok") != Ok(1.0) {
        return error_response(status_for(&reply.doc), &reply.doc);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let heartbeat = shared.cfg.heartbeat;
    tokio::spawn(async move {
        let m = &*commands::metrics::METRICS;
        m.sse_clients.inc();
        pump(conn, reply, db, tx, canonical, batch_size, heartbeat).await;
        m.sse_clients.dec();
    });
    let mut r = Response::new(Body::Stream(rx));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Appends one SSE message.
fn message(out: &mut String, event: Option<&str>, id: &str, data: &str) {
    use std::fmt::Write as _;
    if let Some(e) = event {
        let _ = writeln!(out, "event: {e}");
    }
    let _ = writeln!(out, "id: {id}");
    let _ = write!(out, "data: {data}\n\n");
}

/// Reads the stream with `getMore` and sends its events until the client goes away, the
/// stream ends (after an invalidate) or fails (the error is sent as an `error` event).
async fn pump(
    mut conn: HttpConn,
    first: commands::Reply,
    db: String,
    tx: mpsc::Sender<Bytes>,
    canonical: bool,
    batch_size: Option<i32>,
    heartbeat: Duration,
) {
    let m = &*commands::metrics::METRICS;
    let mut reply = first;
    let mut last_beat = Instant::now();
    // The browser waits this long before reconnecting.
    if tx
        .send(Bytes::from_static(b"retry: 1000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    let (mut id, coll) = {
        let c = reply
            .doc
            .get_document("cursor")
            .cloned()
            .unwrap_or_default();
        let ns = c.get_str("ns").unwrap_or("").to_string();
        let coll = ns
            .split_once('.')
            .map_or(ns.clone(), |(_, c)| c.to_string());
        (c.get_i64("id").unwrap_or(0), coll)
    };
    loop {
        let cursor = reply
            .doc
            .get_document("cursor")
            .cloned()
            .unwrap_or_default();
        let mut out = String::new();
        let mut sent = 0u64;
        // The events as the server encoded them: streams that share an event share its
        // JSON, made once.
        for ev in reply.batch.take().map(|(_, b)| b).unwrap_or_default() {
            message(&mut out, None, &token_id(ev.token()), &ev.json(canonical));
            sent += 1;
        }
        if sent == 0 && last_beat.elapsed() >= heartbeat {
            if let Ok(pbrt) = cursor.get_document("postBatchResumeToken") {
                let data = Bson::Document(doc! {"postBatchResumeToken": pbrt.clone()})
                    .into_relaxed_extjson()
                    .to_string();
                message(&mut out, Some("heartbeat"), &token_id(pbrt), &data);
            }
        }
        if !out.is_empty() {
            last_beat = Instant::now();
            if tx.send(Bytes::from(out)).await.is_err() {
                break;
            }
            m.sse_events.inc_by(sent);
        }
        id = cursor.get_i64("id").unwrap_or(id);
        if id == 0 {
            // The stream ended (an invalidate): the client reconnects after it.
            return;
        }
        let mut get_more =
            doc! {"getMore": id, "collection": &coll, "maxTimeMS": 1000i64, "$db": &db};
        if let Some(n) = batch_size {
            get_more.insert("batchSize", n);
        }
        let next = tokio::select! {
            r = conn.run_reply(get_more) => r,
            () = tx.closed() => break,
        };
        if next.doc.get_f64("ok") != Ok(1.0) {
            let out = format!("event: error\ndata: {}\n\n", error_json(&next.doc));
            let _ = tx.send(Bytes::from(out)).await;
            return;
        }
        reply = next;
    }
    // The client went away: close the cursor.
    if id != 0 {
        let _ = conn
            .run(doc! {"killCursors": &coll, "cursors": [id], "$db": &db})
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_round_trip() {
        let t = doc! {"_data": "8263AB"};
        assert_eq!(token_id(&t), "8263AB");
        assert_eq!(parse_token_id("8263AB"), Some(t));
        let typed = doc! {"_data": "82", "_typeBits": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0x82, 0, 1] }};
        let id = token_id(&typed);
        assert!(id.starts_with('{') && !id.contains('\n'), "{id}");
        assert_eq!(parse_token_id(&id), Some(typed));
        assert_eq!(parse_token_id("not a token"), None);
    }

    #[test]
    fn query_strings_decode() {
        let p = query_params(Some(
            "pipeline=%5B%7B%22%24match%22%3A1%7D%5D&fullDocument=updateLookup&x=a+b",
        ))
        .unwrap();
        assert_eq!(p[0], ("pipeline".into(), "[{\"$match\":1}]".into()));
        assert_eq!(p[1], ("fullDocument".into(), "updateLookup".into()));
        assert_eq!(p[2], ("x".into(), "a b".into()));
        assert!(query_params(Some("a=%zz")).is_err());
    }
}
