//! The WebSocket transport: both directions on one socket; text messages
//! carry JSON batches, binary application messages travel natively.

use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::wire::{binary, json};
use holdfast_protocol::{Frame, Message, TransportKind};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::{Ctx, EndReason, Link, Outcome, Step, sleep_until};
use crate::error::AttemptError;
use crate::shared::Shared;

pub(crate) async fn run(ctx: &Ctx, shared: &Shared, stop: &Notify) -> Outcome {
    let Some((mut link, target)) = Link::attach(shared, TransportKind::WebSocket) else {
        return Outcome::SessionClosed;
    };
    let url = ctx.endpoint(TransportKind::WebSocket, &target);
    let connect = ctx
        .net
        .connect_ws(&url, ctx.max_message, target.key.as_deref());
    let ws = match tokio::time::timeout(ctx.probe_timeout, connect).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            link.detach();
            return Outcome::Failed(error);
        }
        Err(_) => {
            link.detach();
            return Outcome::Failed(AttemptError::Blocked("WebSocket connect timed out".into()));
        }
    };
    let (mut sink, mut stream) = ws.split();
    let outcome = loop {
        let mut failed = None;
        while let Some(frames) = link.transmit() {
            if let Err(e) = write(&mut sink, frames).await {
                failed = Some(link.lost(format!("write failed: {e}")));
                break;
            }
        }
        if let Some(outcome) = failed {
            break outcome;
        }
        if let Err(e) = sink.flush().await {
            break link.lost(format!("write failed: {e}"));
        }
        let reading = !link.inbound_full();
        let step = tokio::select! {
            incoming = stream.next(), if reading => match incoming {
                Some(Ok(message)) => match frames_of(message) {
                    Ok(Some(frames)) => link.feed(frames, false),
                    Ok(None) => Step::Ended(EndReason::Lost("closed by the server".into())),
                    Err(why) => Step::Ended(EndReason::Lost(why)),
                },
                Some(Err(e)) => Step::Ended(EndReason::Lost(e.to_string())),
                None => Step::Ended(EndReason::Lost("connection closed".into())),
            },
            () = shared.driver.notified() => Step::Continue,
            () = shared.drained.notified(), if !reading => Step::Continue,
            () = sleep_until(link.deadline()) => link.timeout(),
            () = stop.notified() => Step::Ended(EndReason::Stopped),
        };
        if let Some(outcome) = link.outcome(step) {
            break outcome;
        }
    };
    link.detach();
    // Say goodbye politely if the socket still works; never wait long.
    let _ = tokio::time::timeout(ctx.probe_timeout, sink.close()).await;
    outcome
}

/// The frames in one WebSocket message; `None` when the server closed.
fn frames_of(message: WsMessage) -> Result<Option<Vec<Frame>>, String> {
    match message {
        WsMessage::Text(text) => json::decode_batch_str(text.as_str())
            .map(Some)
            .map_err(|e| format!("bad batch from the server: {e}")),
        WsMessage::Binary(bytes) => {
            let (seq, payload) = binary::decode_binary_message(bytes)
                .map_err(|e| format!("bad binary message from the server: {e}"))?;
            Ok(Some(vec![Frame::Message {
                seq,
                message: Message::Binary(payload),
            }]))
        }
        // Proof of life, no frames.
        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(Some(Vec::new())),
        WsMessage::Close(_) => Ok(None),
    }
}

async fn write<S>(sink: &mut S, frames: Vec<Frame>) -> Result<(), tungstenite::Error>
where
    S: futures_util::Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    for unit in binary::websocket_units(frames) {
        sink.feed(match unit {
            binary::WsUnit::Text(text) => WsMessage::text(text),
            binary::WsUnit::Binary(bytes) => WsMessage::Binary(bytes),
        })
        .await?;
    }
    Ok(())
}
