//! The WebSocket transport: both directions on one socket; text messages
//! carry JSON batches, binary application messages travel natively, and so
//! do large texts once the server's greeting granted it (`PROTOCOL.md`
//! §2.2.1).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::wire::{binary, json};
use holdfast_protocol::{Frame, TransportKind};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use holdfast_protocol::connector::AttemptEnd;

use super::{Ctx, Link, Step, sleep_until};
use crate::error::ended;
use crate::shared::Shared;

/// Carries the session on a WebSocket until it ends. The connect, the
/// upgrade and the greeting must all arrive within `greeting_timeout`.
pub(crate) async fn run(
    ctx: &Ctx,
    shared: &Shared,
    stop: &Notify,
    greeting_timeout: Duration,
) -> AttemptEnd {
    let Some((mut link, target)) = Link::attach(shared, TransportKind::WebSocket, greeting_timeout)
    else {
        return AttemptEnd::SessionClosed;
    };
    let url = ctx.endpoint(TransportKind::WebSocket, &target, link.report());
    let connect = ctx
        .net
        .connect_ws(&url, ctx.max_message, target.key.as_deref());
    let ws = match tokio::time::timeout(greeting_timeout, connect).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(end)) => {
            link.detach();
            return end;
        }
        Err(_) => {
            link.detach();
            return ended(AttemptEnd::Timeout, "no WebSocket upgrade");
        }
    };
    let (mut sink, mut stream) = ws.split();
    // Native text, once the greeting granted it: the client sends nothing
    // before the greeting (§4), so every text is sent knowing.
    let mut native_text_min = None;
    // Only the greeting grants it, and it is the server's first frame.
    let mut awaiting_greeting = true;
    let end = loop {
        let mut failed = None;
        while let Some(frames) = link.transmit(None) {
            if let Err(e) = write(&mut sink, frames, native_text_min).await {
                failed = Some(ended(AttemptEnd::Closed, format_args!("write: {e}")));
                break;
            }
        }
        if let Some(end) = failed {
            break end;
        }
        if let Err(e) = sink.flush().await {
            break ended(AttemptEnd::Closed, format_args!("write: {e}"));
        }
        let reading = !link.inbound_full();
        let deadline = link.deadline();
        let step = tokio::select! {
            incoming = stream.next(), if reading => match incoming {
                Some(Ok(message)) => match frames_of(message) {
                    Ok(Some(frames)) => {
                        if awaiting_greeting && !frames.is_empty() {
                            awaiting_greeting = false;
                            if frames.iter().any(Frame::grants_native_text) {
                                native_text_min = Some(binary::NATIVE_TEXT_MIN);
                                link.shared.lock().core.set_native_text(native_text_min);
                            }
                        }
                        link.feed(frames, false)
                    }
                    Ok(None) => Step::End(ended(AttemptEnd::Closed, "closed by the server")),
                    Err(why) => Step::End(ended(AttemptEnd::Invalid, why)),
                },
                Some(Err(e)) => Step::End(ended(AttemptEnd::Closed, e)),
                None => Step::End(ended(AttemptEnd::Closed, "connection closed")),
            },
            () = shared.driver.notified() => Step::Continue,
            () = shared.drained.notified(), if !reading => Step::Continue,
            () = sleep_until(deadline) => link.timeout(),
            () = stop.notified() => Step::End(AttemptEnd::Stopped),
        };
        if let Some(end) = Link::outcome(step) {
            break end;
        }
    };
    link.detach();
    // Say goodbye politely if the socket still works; never wait long.
    let _ = tokio::time::timeout(ctx.probe_timeout, sink.close()).await;
    end
}

/// The frames in one WebSocket message; `None` when the server closed.
fn frames_of(message: WsMessage) -> Result<Option<Vec<Frame>>, String> {
    match message {
        WsMessage::Text(text) => json::decode_batch_str(text.as_str())
            .map(Some)
            .map_err(|e| format!("bad batch from the server: {e}")),
        WsMessage::Binary(bytes) => {
            // Binary (0x01), or text (0x02) that must be UTF-8.
            let (seq, message) = binary::decode_native_message(bytes)
                .map_err(|e| format!("bad binary message from the server: {e}"))?;
            Ok(Some(vec![Frame::Message { seq, message }]))
        }
        // Proof of life, no frames.
        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(Some(Vec::new())),
        WsMessage::Close(_) => Ok(None),
    }
}

/// Writes frames; texts of at least `native_text_min` bytes natively.
async fn write<S>(
    sink: &mut S,
    frames: Vec<Frame>,
    native_text_min: Option<usize>,
) -> Result<(), tungstenite::Error>
where
    S: futures_util::Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    for unit in binary::websocket_units_with(frames, native_text_min) {
        sink.feed(match unit {
            binary::WsUnit::Text(text) => WsMessage::text(text),
            binary::WsUnit::Binary(bytes) => WsMessage::Binary(bytes),
        })
        .await?;
    }
    Ok(())
}
