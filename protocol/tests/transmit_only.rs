//! `ClientSession::poll_transmit_only`: what a send request may carry while
//! part of the upstream waits (`PROTOCOL.md` §8.4). While messages wait out
//! a refused request's `Retry-After`, the acknowledgement and the `pong`
//! that are due still go, alone; while a failed ack-only request's acks
//! wait, messages still go, the acks riding along.

use std::time::{Duration, Instant};

use holdfast_protocol::wire::json;
use holdfast_protocol::{
    AttachmentId, ClientConfig, ClientSession, Frame, Message, TransmitOnly, TransportKind,
};

const OPEN: &[u8] = br#"[{"t":"open","v":1,"key":"k","sid":"s","ping":20000,"timeout":40000,"resume":120000,"hold":25000,"max_msg":65536,"max_batch":1048576}]"#;

/// A client with its SSE attachment open.
fn opened(t0: Instant) -> (ClientSession, AttachmentId) {
    let mut client = ClientSession::new(ClientConfig::default());
    let id = client.attach(t0, TransportKind::Sse);
    let open = json::decode_batch(OPEN).expect("the open frame");
    client.handle_frames(t0, Some(id), open).expect("opened");
    (client, id)
}

fn message(seq: u64, text: &str) -> Frame {
    Frame::Message {
        seq,
        message: Message::text(text),
    }
}

fn frames(client: &mut ClientSession, now: Instant, only: TransmitOnly) -> Vec<Frame> {
    client
        .poll_transmit_only(now, only)
        .map(|t| t.frames)
        .unwrap_or_default()
}

#[test]
fn control_takes_the_ack_and_pong_due_and_leaves_the_messages() {
    let t0 = Instant::now();
    let (mut client, id) = opened(t0);
    client.send(Message::text("a")).expect("queued");
    client.send(Message::text("b")).expect("queued");
    client
        .handle_frames(t0, Some(id), [message(1, "one"), Frame::Ping])
        .expect("delivered");
    // The pong is due at once, and the ack rides along with it.
    assert_eq!(
        frames(&mut client, t0, TransmitOnly::Control),
        [Frame::Pong, Frame::ack(1)]
    );
    assert_eq!(frames(&mut client, t0, TransmitOnly::Control), []);
    // An ack alone is due after the ack delay, messages or not.
    client
        .handle_frames(t0, Some(id), [message(2, "two")])
        .expect("delivered");
    let later = t0 + Duration::from_millis(100);
    client.handle_timeout(later);
    assert_eq!(
        frames(&mut client, later, TransmitOnly::Control),
        [Frame::ack(2)]
    );
    // The messages waited: they go, with their seqs, once they may.
    assert_eq!(
        client
            .poll_transmit(later)
            .map(|t| t.frames)
            .unwrap_or_default(),
        [message(1, "a"), message(2, "b")]
    );
}

#[test]
fn messages_only_sends_nothing_unless_a_message_goes() {
    let t0 = Instant::now();
    let (mut client, id) = opened(t0);
    client
        .handle_frames(t0, Some(id), [message(1, "one"), Frame::Ping])
        .expect("delivered");
    // A pong and an ack are due, but alone they wait.
    assert_eq!(frames(&mut client, t0, TransmitOnly::Messages), []);
    client.send(Message::text("a")).expect("queued");
    // With a message they ride along.
    assert_eq!(
        frames(&mut client, t0, TransmitOnly::Messages),
        [Frame::Pong, message(1, "a"), Frame::ack(1)]
    );
    // A failed request: the message goes again, and the ack with it.
    client.request_failed(t0);
    assert_eq!(
        frames(&mut client, t0, TransmitOnly::Messages),
        [message(1, "a"), Frame::ack(1)]
    );
    assert_eq!(frames(&mut client, t0, TransmitOnly::Control), []);
}
