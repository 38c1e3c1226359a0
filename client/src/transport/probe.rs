//! Probing a better transport without touching the session
//! (`PROTOCOL.md` §8.5): proves a frame can go both ways on WebSocket, or
//! that an event stream is not buffered, before switching up.

use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::wire::json;
use holdfast_protocol::wire::sse::{SseItem, SseParser};
use holdfast_protocol::{ConnectTarget, Frame, TransportKind};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Ctx, KEY_HEADER};

/// Whether `kind` works now for the session with `key`.
pub(crate) async fn probe(ctx: &Ctx, kind: TransportKind, key: &str) -> bool {
    let target = ConnectTarget {
        key: Some(key.to_owned()),
        last: 0,
    };
    let mut url = ctx.endpoint(kind, &target, None);
    url.query_pairs_mut().append_pair("probe", "1");
    let attempt = async {
        match kind {
            TransportKind::WebSocket => probe_ws(ctx, &url, key).await,
            TransportKind::Sse => probe_sse(ctx, &url, key).await,
            TransportKind::LongPoll => true,
        }
    };
    let works = tokio::time::timeout(ctx.probe_timeout, attempt)
        .await
        .unwrap_or(false);
    tracing::debug!(transport = %kind, works, "probed");
    works
}

async fn probe_ws(ctx: &Ctx, url: &url::Url, key: &str) -> bool {
    let Ok(mut ws) = ctx.net.connect_ws(url, ctx.max_message, Some(key)).await else {
        return false;
    };
    let ping = json::encode_batch_to_string(&[Frame::Ping]);
    if ws.send(WsMessage::text(ping)).await.is_err() {
        return false;
    }
    while let Some(Ok(message)) = ws.next().await {
        if let WsMessage::Text(text) = message
            && json::decode_batch(text.as_bytes()).is_ok_and(|frames| frames.contains(&Frame::Pong))
        {
            let _ = ws.close(None).await;
            return true;
        }
    }
    false
}

async fn probe_sse(ctx: &Ctx, url: &url::Url, key: &str) -> bool {
    let request = ctx.net.http.get(url.clone()).header(KEY_HEADER, key);
    let Ok(response) = request.send().await else {
        return false;
    };
    if response.status() != 200 {
        return false;
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new(1 << 16);
    while let Some(Ok(chunk)) = body.next().await {
        let mut items = Vec::new();
        if parser.feed(&chunk, &mut items).is_err() {
            return false;
        }
        let pinged = items.iter().any(|item| match item {
            SseItem::Event { data, .. } => json::decode_batch(data.as_bytes())
                .is_ok_and(|frames| frames.contains(&Frame::Ping)),
            SseItem::Comment => false,
        });
        if pinged {
            return true;
        }
    }
    false
}
