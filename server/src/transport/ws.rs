//! `GET <mount>/ws`: one WebSocket carries both directions (`PROTOCOL.md`
//! §8.1). Text messages are JSON batches; binary application messages
//! travel natively with a 9-byte header, and so do large text messages
//! where the client offered it (`wstext=1`, §2.2.1).

use std::pin::pin;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::config::default_max_batch;
use holdfast_protocol::wire::{binary, json};
use holdfast_protocol::{
    AttachmentId, Close, Frame, Message, ProtocolError, SessionConfig, TransportKind,
};
use http::{HeaderMap, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{
    WebSocketConfig, frame::coding::CloseCode as WsCloseCode,
};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};

use super::upgrade::{Socket, Upgrade};
use super::{DetachOnDrop, Prepared, attach, prepare, probe_over};
use tracing::Instrument;

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
    // Pages from foreign origins never get here: the Origin layer
    // (`origin::OriginLayer`) refused them before the upgrade. Every other
    // refusal is made after it, as frames on the socket.
    let native_text = NativeText::offered(&state, &uri);
    let prepared = prepare(&state, headers, uri, peer, TransportKind::WebSocket, None).await;
    let session = &state.config.session;
    let max_batch = session.max_batch;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_batch))
        .max_frame_size(Some(max_batch))
        .read_buffer_size(state.config.ws_read_buffer)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_write_buffer(session));
    let write_timeout = state.config.write_timeout;
    upgrade.on_upgrade(config, write_timeout, move |socket| async move {
        // Attach only now that the upgrade is complete: an upgrade that
        // never completes never pins the session. The short-lived branches
        // are boxed so the long-lived task is only as large as `run`.
        if matches!(prepared, Ok(Prepared::Probe)) {
            return Box::pin(probe(socket, state.config.probe_lifetime)).await;
        }
        let attached = match prepared {
            Ok(prepared) => attach(&state, prepared, TransportKind::WebSocket).await,
            Err(reject) => Err(reject),
        };
        match attached {
            Ok((shared, id)) => {
                let span = shared.attachment_span(TransportKind::WebSocket);
                run(socket, shared, id, native_text).instrument(span).await
            }
            Err(reject) => Box::pin(refuse(socket, reject)).await,
        }
    })
}

/// Native text on one WebSocket (`PROTOCOL.md` §2.2.1).
#[derive(Clone, Copy, Debug)]
struct NativeText {
    /// The server reads native text messages (type `0x02`): whenever it
    /// has the feature, whether or not this client asked.
    accepted: bool,
    /// The client offered it (`wstext=1`) and the server has it: its
    /// greeting says so (`wstext`), and its large texts travel natively.
    granted: bool,
}

impl NativeText {
    fn offered(state: &ServerState, uri: &Uri) -> Self {
        let accepted = state.config.ws_native_text;
        let offered = uri
            .query()
            .and_then(|query| super::query_value(query, "wstext"))
            .is_some_and(|value| value == "1");
        Self {
            accepted,
            granted: accepted && offered,
        }
    }

    /// The threshold for [`binary::websocket_units_with`].
    fn send_min(self) -> Option<usize> {
        self.granted.then_some(binary::NATIVE_TEXT_MIN)
    }
}

/// Bytes of outgoing frames tungstenite gathers before it writes them to
/// the socket (its own default, made explicit because the bound below
/// depends on it).
const WRITE_BUFFER: usize = 128 * 1024;

/// Room for control frames — pongs to the client's WebSocket pings, the
/// close — queued while a data message waits for the socket.
const CONTROL_ROOM: usize = 16 * 1024;

/// The most a connection's write buffer may hold. tungstenite queues a pong
/// for every ping it reads, even while the client reads nothing; unbounded
/// (its default), a client that pings and never reads grows the server
/// without limit. With a bound, a pong that does not fit waits in
/// tungstenite's single pending-control slot (a newer pong replaces it),
/// and a data message that does not fit fails the write, which drops the
/// attachment. The bound fits the largest message the server writes on top
/// of a full gathering buffer, plus [`CONTROL_ROOM`]: a client that reads
/// is never refused.
fn max_write_buffer(session: &SessionConfig) -> usize {
    WRITE_BUFFER
        .saturating_add(largest_unit(session))
        .saturating_add(CONTROL_ROOM)
}

/// The largest WebSocket message the server writes: a batch is cut at
/// `max_message` bytes but always holds at least one message, which JSON
/// escaping can grow sixfold — what the default `max_batch` allows for,
/// and a configured `max_batch` may not.
fn largest_unit(session: &SessionConfig) -> usize {
    default_max_batch(session.max_message).max(session.max_batch)
}

/// A probe (`PROTOCOL.md` §8.5): answers each `ping` with `pong`, touches
/// no session, and after `lifetime` ends with `detach` 4001 and a close
/// with that code (a bare TCP close would look like a failure: 1006).
async fn probe(socket: Socket, lifetime: std::time::Duration) {
    let (mut sink, mut stream) = socket.split();
    let over = tokio::time::sleep(lifetime);
    let mut over = pin!(over);
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = &mut over => {
                let over = probe_over();
                let _ = write_frames(&mut sink, vec![Frame::Detach(over.clone())]).await;
                let _ = sink.send(close_message(&over)).await;
                let _ = tokio::time::timeout(LINGER, drain(stream)).await;
                return;
            }
        };
        let pinged = match message {
            Some(Ok(WsMessage::Text(text))) => json::decode_batch(text.as_bytes())
                .is_ok_and(|frames| frames.contains(&Frame::Ping)),
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => false,
        };
        if pinged && sink.send(text_message(&[Frame::Pong])).await.is_err() {
            break;
        }
    }
    // The client closed or went away: tungstenite's answer to its close
    // goes out with the flush.
    let _ = sink.close().await;
}

/// Reports a refusal after the upgrade: the frame, then the close code.
async fn refuse(socket: Socket, reject: Reject) {
    crate::metrics::rejected(&reject);
    let (mut sink, stream) = socket.split();
    let _ = write_frames(&mut sink, vec![reject.frame()]).await;
    let _ = sink.send(close_message(reject.close())).await;
    let _ = tokio::time::timeout(LINGER, drain(stream)).await;
}

/// How long the server keeps reading (and discarding) what a client still
/// sends after the server's close frame, before it drops the connection.
/// Closing a TCP socket that has unread input sends a reset, and a reset
/// discards whatever is still queued for the client — the close frame, and
/// with it the reason for the close: the client would see 1006 (an
/// abnormal end) instead of, say, 1008. Lingering lets the client read the
/// close and answer it, after which the socket closes cleanly. A client
/// that keeps sending is dropped when the time is up. Bounded like every
/// read: one message at most `max_batch`, one linger per connection.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards until the client answers the close or goes away.
async fn drain(mut stream: SplitStream<Socket>) {
    while let Some(Ok(_)) = stream.next().await {}
}

/// Runs an attachment: a reader task feeds the session, this task writes
/// what the session says to write. Two tasks, so that each wakes only for
/// its own work (a waiting read costs tungstenite a buffer clear, so it is
/// not polled when there is only output to write).
///
/// Every write is under the socket's write deadline
/// ([`ServerConfig::write_timeout`](crate::ServerConfig::write_timeout)): a
/// client that stops reading fails the write, which ends this task and
/// detaches (the session lives on). The task also ends once the session is
/// over for good, so an attachment never outlives its session.
async fn run(socket: Socket, shared: Arc<Shared>, id: AttachmentId, native_text: NativeText) {
    let _detach = DetachOnDrop {
        shared: shared.clone(),
        id,
    };
    shared.lock().set_native_text(id, native_text.send_min());
    let (mut sink, stream) = socket.split();
    let end = Arc::new(ReaderEnd::default());
    let reader = tokio::spawn(read(stream, shared.clone(), id, end.clone(), native_text));
    let mut reader = AbortOnDrop(reader);
    loop {
        let notified = shared.transmit.notified();
        let mut notified = pin!(notified);
        notified.as_mut().enable();
        let ended = end.wake.notified();
        let mut ended = pin!(ended);
        ended.as_mut().enable();
        if let Some(reject) = end.take() {
            match reject {
                // The client broke a limit that ends the session (1009):
                // its `close` goes out below like any other, after the
                // queued messages and with the final ack (PROTOCOL.md §9).
                Some(Reject::Session(_)) if shared.lock().is_closed() => {}
                Some(reject) => {
                    let _ = write_frames(&mut sink, vec![reject.frame()]).await;
                    let _ = sink.send(close_message(reject.close())).await;
                    reader.linger().await;
                    return;
                }
                // The client closed or went away: send tungstenite's answer
                // to its close, if it sent one (one attempt, under the
                // write deadline).
                None => {
                    let _ = sink.close().await;
                    return;
                }
            }
        }
        loop {
            let transmit = {
                let mut core = shared.lock();
                let now = now();
                let transmit = core.poll_transmit(now, id);
                if transmit.is_none() && core.is_finished(now) {
                    // Forgotten (or about to be): nothing more will come.
                    return;
                }
                transmit
            };
            let Some(transmit) = transmit else { break };
            if write_units(&mut sink, transmit.frames, native_text.send_min())
                .await
                .is_err()
            {
                return;
            }
            if let Some(close) = transmit.end {
                let _ = sink.send(close_message(&close)).await;
                reader.linger().await;
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

impl AbortOnDrop {
    /// Lets the reader run on for at most [`LINGER`] after the server's
    /// close frame: until the client answers it or goes away.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(LINGER, &mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reader task: feeds what arrives to the session. The client keeps
/// within the upstream window (`PROTOCOL.md` §3.1), and a client that
/// overruns it is refused (`detach` 1008), so reading never queues more
/// than the window. Only the server-wide `max_buffered_bytes` holds the
/// reader back ([`hold_back`]).
async fn read(
    mut stream: SplitStream<Socket>,
    shared: Arc<Shared>,
    id: AttachmentId,
    end: Arc<ReaderEnd>,
    native_text: NativeText,
) {
    loop {
        hold_back(&shared).await;
        let incoming = stream.next().await;
        if let Err(reject) = receive(&shared, id, incoming, native_text) {
            if let Some(reject) = &reject {
                crate::metrics::rejected(reject);
            }
            let refused = reject.is_some();
            end.set(reject);
            if refused {
                // The writer sends the refusal and its close, then waits
                // (at most LINGER) for this task to end.
                drain(stream).await;
            }
            return;
        }
    }
}

/// Waits while the server-wide total holds the reader back
/// ([`Shared::may_read_inbound`]): past `max_buffered_bytes`, while the
/// session's application has received messages to take and does not wait
/// for room to send. TCP backpressure then reaches the client. An
/// application that waits for room waits for the client's acks, which
/// travel behind its data: the reader reads on for it, or neither would
/// ever move again (a deadlock).
async fn hold_back(shared: &Shared) {
    // Held back, the reader looks again this often: the total may have
    // come down through other sessions, and the client's silence is
    // forgiven if the application took messages meanwhile (the client's
    // pongs wait behind its data). A third of the timeout keeps it from
    // ever counting a whole timeout.
    let every = shared.server_config().session.timeout / 3;
    let mut taken = None;
    loop {
        let drained = shared.drained.notified();
        let mut drained = pin!(drained);
        drained.as_mut().enable();
        if shared.may_read_inbound() {
            return;
        }
        let now_taken = shared.taken();
        if taken.is_some_and(|before| now_taken > before) {
            shared.presume_heard();
        }
        taken = Some(now_taken);
        tokio::select! {
            () = &mut drained => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Feeds one WebSocket message to the session. `Err(None)`: the transport
/// is gone; `Err(Some(_))`: refuse and close.
fn receive(
    shared: &Shared,
    id: AttachmentId,
    incoming: Option<Result<WsMessage, tungstenite::Error>>,
    native_text: NativeText,
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
            // Large payloads may stay slices of the message, small ones are
            // copied out (`wire::may_share`). Not cloned: a clone would make
            // the message look shared.
            let backing: &bytes::Bytes = text.as_ref();
            json::decode_batch_shared(text.as_str(), backing)
                .map_err(|e| Some(ProtocolError::from(e).into()))?
        }
        Some(Ok(WsMessage::Binary(bytes))) => {
            // A text message (0x02) is malformed if it is not UTF-8, and
            // for a server without the feature, as its type byte was
            // reserved before: 1002 either way.
            let (seq, message) = if native_text.accepted {
                binary::decode_native_message(bytes)
            } else {
                binary::decode_binary_message(bytes).map(|(seq, b)| (seq, Message::Binary(b)))
            }
            .map_err(|e| Some(ProtocolError::from(e).into()))?;
            vec![Frame::Message { seq, message }]
        }
        // WebSocket-level pings prove the client alive too.
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Vec::new(),
    };
    if !frames.is_empty() {
        // Frames of the session's own: the client got its opening answer.
        shared.client_heard();
    }
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
    write_units(sink, frames, None).await
}

/// [`write_frames`], and with `native_text_min` texts of at least that
/// many bytes natively too (a client that negotiated it, §2.2.1).
async fn write_units(
    sink: &mut Sink,
    frames: Vec<Frame>,
    native_text_min: Option<usize>,
) -> Result<(), tungstenite::Error> {
    for unit in binary::websocket_units_with(frames, native_text_min) {
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

/// The WebSocket close frame for a session or attachment end. The code is
/// one RFC 6455 lets an endpoint send, or 1002.
fn close_message(close: &Close) -> WsMessage {
    let reason = holdfast_protocol::wire::truncate_reason(close.reason.clone());
    WsMessage::Close(Some(CloseFrame {
        code: WsCloseCode::from(sendable_close_code(close.code.0)),
        reason: Utf8Bytes::from(reason.as_ref()),
    }))
}

/// `code` if RFC 6455 lets an endpoint put it in a close frame, 1002
/// (protocol error) otherwise. A close code can come from the client (the
/// code of its own `close` frame, which the session echoes) or from the
/// application ([`Session::close`](crate::Session::close)); either could
/// be one that must never be on the wire — 1005, 1006 and 1015 stand for
/// "no code", "no close frame" and "TLS failure" (§7.4.1), 1004 and
/// 1016–2999 are reserved, 0–999 and 5000 up are not close codes at all —
/// and a browser receiving one fails the connection.
fn sendable_close_code(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => 1002,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_protocol::CloseCode;

    fn wire_code(code: u16) -> u16 {
        match close_message(&Close::new(CloseCode(code), "x")) {
            WsMessage::Close(Some(frame)) => u16::from(frame.code),
            other => panic!("not a close frame: {other:?}"),
        }
    }

    #[test]
    fn close_codes_outside_rfc_6455s_sendable_ranges_become_1002() {
        for code in [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(wire_code(code), 1002, "code {code}");
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1009, 1011, 1014, 3000, 4000, 4409, 4999,
        ] {
            assert_eq!(wire_code(code), code, "code {code}");
        }
    }

    #[test]
    fn the_write_buffer_fits_the_largest_message_with_room_for_control_frames() {
        let mut session = SessionConfig::default();
        // A message of control characters is written `\u0001` each: 6×.
        let worst = 6 * session.max_message + 64;
        assert!(max_write_buffer(&session) >= WRITE_BUFFER + worst + CONTROL_ROOM);
        // Also with a `max_batch` cut down to `max_message`, which bounds
        // what the server reads, not what it writes.
        session.max_batch = session.max_message;
        assert!(max_write_buffer(&session) >= WRITE_BUFFER + worst + CONTROL_ROOM);
        session.max_message = usize::MAX;
        assert_eq!(max_write_buffer(&session), usize::MAX);
    }
}
