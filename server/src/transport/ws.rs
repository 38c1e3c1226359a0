//! `GET <mount>/ws`: one WebSocket carries both directions (`PROTOCOL.md`
//! §8.1). Text messages are JSON batches; binary application messages
//! travel natively with a 9-byte header.

use std::pin::pin;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::wire::{binary, json};
use holdfast_protocol::{AttachmentId, Close, Frame, Message, ProtocolError, TransportKind};
use http::{HeaderMap, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{
    WebSocketConfig, frame::coding::CloseCode as WsCloseCode,
};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};

use super::upgrade::{Socket, Upgrade};
use super::{DetachOnDrop, PROBE_LIFETIME, Prepared, attach, prepare};
use crate::peer::Peer;
use crate::reject::Reject;
use crate::server::ServerState;
use crate::session::{Shared, now};

type Sink = SplitSink<Socket, WsMessage>;

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    peer: Peer,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Upgrade,
) -> Response {
    // The one refusal made before the upgrade: pages from foreign origins
    // get nothing at all.
    if let Err(reject) = state.check_origin(&headers, peer) {
        return reject.into_http();
    }
    let prepared = prepare(&state, headers, uri, peer, TransportKind::WebSocket, None).await;
    let max_batch = state.config.session.max_batch;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_batch))
        .max_frame_size(Some(max_batch))
        .read_buffer_size(state.config.ws_read_buffer);
    upgrade.on_upgrade(config, move |socket| async move {
        // Attach only now that the upgrade is complete: an upgrade that
        // never completes never pins the session. The short-lived branches
        // are boxed so the long-lived task is only as large as `run`.
        if matches!(prepared, Ok(Prepared::Probe)) {
            return Box::pin(probe(socket)).await;
        }
        match prepared.and_then(|p| attach(&state, p, TransportKind::WebSocket)) {
            Ok((shared, id)) => run(socket, shared, id).await,
            Err(reject) => Box::pin(refuse(socket, reject)).await,
        }
    })
}

/// A probe (`PROTOCOL.md` §8.5): answers each `ping` with `pong`, touches
/// no session, and ends after [`PROBE_LIFETIME`].
async fn probe(mut socket: Socket) {
    let answer = async {
        while let Some(Ok(message)) = socket.next().await {
            let pinged = match &message {
                WsMessage::Text(text) => json::decode_batch(text.as_bytes())
                    .is_ok_and(|frames| frames.contains(&Frame::Ping)),
                WsMessage::Close(_) => return,
                _ => false,
            };
            if pinged && socket.send(text_message(&[Frame::Pong])).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(PROBE_LIFETIME, answer).await;
}

/// Reports a refusal after the upgrade: the frame, then the close code.
async fn refuse(socket: Socket, reject: Reject) {
    let (mut sink, _) = socket.split();
    let _ = write_frames(&mut sink, vec![reject.frame()]).await;
    let _ = sink.send(close_message(reject.close())).await;
}

/// Runs an attachment: a reader task feeds the session, this task writes
/// what the session says to write. Two tasks, so that each wakes only for
/// its own work (a waiting read costs tungstenite a buffer clear, so it is
/// not polled when there is only output to write).
async fn run(socket: Socket, shared: Arc<Shared>, id: AttachmentId) {
    let _detach = DetachOnDrop {
        shared: shared.clone(),
        id,
    };
    let (mut sink, stream) = socket.split();
    let end = Arc::new(ReaderEnd::default());
    let reader = tokio::spawn(read(stream, shared.clone(), id, end.clone()));
    let _stop_reader = AbortOnDrop(reader);
    loop {
        let notified = shared.transmit.notified();
        let mut notified = pin!(notified);
        notified.as_mut().enable();
        let ended = end.wake.notified();
        let mut ended = pin!(ended);
        ended.as_mut().enable();
        if let Some(reject) = end.take() {
            if let Some(reject) = reject {
                let _ = write_frames(&mut sink, vec![reject.frame()]).await;
                let _ = sink.send(close_message(reject.close())).await;
            }
            return;
        }
        loop {
            let transmit = shared.lock().poll_transmit(now(), id);
            let Some(transmit) = transmit else { break };
            if write_frames(&mut sink, transmit.frames).await.is_err() {
                return;
            }
            if let Some(close) = transmit.end {
                let _ = sink.send(close_message(&close)).await;
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        tokio::select! {
            () = &mut notified => {}
            () = &mut ended => {}
        }
    }
}

/// How the reader task ended: `Some(None)`, the client went away;
/// `Some(Some(reject))`, refuse with this and close.
#[derive(Default)]
struct ReaderEnd {
    outcome: std::sync::Mutex<Option<Option<Reject>>>,
    wake: tokio::sync::Notify,
}

impl ReaderEnd {
    fn set(&self, outcome: Option<Reject>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.wake.notify_one();
    }

    fn take(&self) -> Option<Option<Reject>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Stops the reader task with the attachment.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reader task: feeds what arrives to the session, holding back while
/// the application is behind (TCP backpressure then reaches the client).
async fn read(
    mut stream: SplitStream<Socket>,
    shared: Arc<Shared>,
    id: AttachmentId,
    end: Arc<ReaderEnd>,
) {
    let inbound_limit = shared.server_config().session.max_inbound_bytes;
    loop {
        loop {
            let drained = shared.drained.notified();
            let mut drained = pin!(drained);
            drained.as_mut().enable();
            if shared.lock().inbound_bytes() < inbound_limit {
                break;
            }
            drained.await;
        }
        let incoming = stream.next().await;
        if let Err(reject) = receive(&shared, id, incoming) {
            end.set(reject);
            return;
        }
    }
}

/// Feeds one WebSocket message to the session. `Err(None)`: the transport
/// is gone; `Err(Some(_))`: refuse and close.
fn receive(
    shared: &Shared,
    id: AttachmentId,
    incoming: Option<Result<WsMessage, tungstenite::Error>>,
) -> Result<(), Option<Reject>> {
    let frames = match incoming {
        None | Some(Ok(WsMessage::Close(_))) => return Err(None),
        Some(Err(error)) => {
            return Err(too_big(&error).map(|len| {
                let error = ProtocolError::BatchTooBig {
                    len,
                    max: shared.server_config().session.max_batch,
                };
                shared.lock().fail(now(), &error);
                Reject::from(error)
            }));
        }
        Some(Ok(WsMessage::Text(text))) => {
            // Payloads become slices of the received message: no copy.
            let backing = bytes::Bytes::from(text.clone());
            json::decode_batch_shared(text.as_str(), &backing)
                .map_err(|e| Some(ProtocolError::from(e).into()))?
        }
        Some(Ok(WsMessage::Binary(bytes))) => {
            let (seq, payload) = binary::decode_binary_message(bytes)
                .map_err(|e| Some(ProtocolError::from(e).into()))?;
            vec![Frame::Message {
                seq,
                message: Message::Binary(payload),
            }]
        }
        // WebSocket-level pings prove the client alive too.
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Vec::new(),
    };
    shared
        .lock()
        .handle_frames(now(), Some(id), frames)
        .map_err(|e| Some(e.into()))
}

/// The size limit a read error reports, if it is one.
fn too_big(error: &tungstenite::Error) -> Option<usize> {
    match error {
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size,
            ..
        }) => Some(*size),
        tungstenite::Error::Capacity(_) => Some(0),
        _ => None,
    }
}

/// Writes a batch: JSON frames as text messages, binary application
/// messages natively, in order. Does not flush.
async fn write_frames(sink: &mut Sink, frames: Vec<Frame>) -> Result<(), tungstenite::Error> {
    for unit in binary::websocket_units(frames) {
        sink.feed(match unit {
            binary::WsUnit::Text(text) => WsMessage::Text(Utf8Bytes::from(text)),
            binary::WsUnit::Binary(bytes) => WsMessage::Binary(bytes),
        })
        .await?;
    }
    Ok(())
}

fn text_message(frames: &[Frame]) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(json::encode_batch_to_string(frames)))
}

fn close_message(close: &Close) -> WsMessage {
    // A WebSocket close reason is at most 123 bytes.
    let mut reason = close.reason.as_ref();
    while reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    WsMessage::Close(Some(CloseFrame {
        code: WsCloseCode::from(close.code.0),
        reason: Utf8Bytes::from(reason),
    }))
}
