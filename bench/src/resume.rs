//! Resume: a session away while the server queued N messages comes back
//! and receives them. Timed from the reconnect to the last message, with
//! minimal raw clients speaking the wire protocol.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use holdfast_client::TransportKind;
use holdfast_protocol::Frame;
use holdfast_protocol::wire::{json, sse};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::process::ServerProcess;

/// The time to resume and receive `count` buffered messages.
pub async fn run(
    server: &ServerProcess,
    kind: TransportKind,
    count: u64,
) -> Result<Duration, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}/realtime", server.addr);
    // Open a session over long-polling and have the server queue `count`
    // messages while nothing is attached.
    let open = http
        .get(format!("{base}/poll?v=1"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let key = match json::decode_batch(&open)
        .map_err(|e| e.to_string())?
        .first()
    {
        Some(Frame::Open(params)) => params.key.clone(),
        other => return Err(format!("expected open, got {other:?}")),
    };
    let burst = json::encode_batch_to_vec(&[Frame::Message {
        seq: 1,
        message: format!("burst {count}").into(),
    }]);
    http.post(format!("{base}/send?v=1&key={key}"))
        .body(burst)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    // Let the application queue the burst (the resume itself is timed).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    match kind {
        TransportKind::WebSocket => {
            let url = format!("ws://{}/realtime/ws?v=1&key={key}&last=0", server.addr);
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| e.to_string())?;
            let mut received = 0;
            while received < count {
                match ws.next().await {
                    Some(Ok(WsMessage::Text(text))) => {
                        received = received.max(highest_seq(text.as_bytes())?);
                    }
                    Some(Ok(_)) => {}
                    other => return Err(format!("resume over websocket ended: {other:?}")),
                }
            }
            let _ = ws.close(None).await;
        }
        TransportKind::Sse => {
            let response = http
                .get(format!("{base}/sse?v=1&key={key}&last=0"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let mut body = response.bytes_stream();
            let mut parser = sse::SseParser::new(16 << 20);
            let mut received = 0;
            while received < count {
                let chunk = body
                    .next()
                    .await
                    .ok_or("stream ended")?
                    .map_err(|e| e.to_string())?;
                let mut items = Vec::new();
                parser.feed(&chunk, &mut items).map_err(|e| e.to_string())?;
                for item in items {
                    if let sse::SseItem::Event { data, .. } = item {
                        received = received.max(highest_seq(data.as_bytes())?);
                    }
                }
            }
        }
        TransportKind::LongPoll => {
            let mut received = 0;
            while received < count {
                let answer = http
                    .get(format!("{base}/poll?v=1&key={key}&last={received}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                received = received.max(highest_seq(&answer)?);
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = http
        .post(format!("{base}/send?v=1&key={key}"))
        .body(json::encode_batch_to_vec(&[Frame::close(
            holdfast_protocol::CloseCode::NORMAL,
            "",
        )]))
        .send()
        .await;
    Ok(elapsed)
}

fn highest_seq(batch: &[u8]) -> Result<u64, String> {
    let frames = json::decode_batch(batch).map_err(|e| e.to_string())?;
    Ok(frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0))
}
