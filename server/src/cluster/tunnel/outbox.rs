//! The frames a node's tunnels send, queued per destination node, and the
//! task that publishes them on the bus: one envelope per node at a time,
//! holding every frame queued for it (up to a batch size).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::wire::{self, Frame};
use super::{Tunnels, lock};
use crate::store::Store;

/// Frames waiting for the publishing task, per destination node.
#[derive(Default)]
pub(super) struct Outbox {
    queue: Mutex<OutQueue>,
    pub(super) wake: Notify,
}

#[derive(Default)]
struct OutQueue {
    nodes: HashMap<Arc<str>, VecDeque<Queued>>,
    /// Nodes with frames queued, in the order they got their first one.
    ready: VecDeque<Arc<str>>,
    /// Resets for frames of unknown tunnels, queued now.
    strays: usize,
    closed: bool,
}

struct Queued {
    frame: Frame,
    stray: bool,
}

/// Most resets for unknown tunnels queued at once: a flood of stray frames
/// costs at most this many small frames of memory (the rest go
/// unanswered).
const MAX_STRAY_RESETS: usize = 1024;

impl Outbox {
    /// Queues `frame` for `node`. Data frames are bounded by the window
    /// and control frames by the tunnels, except answers to strays
    /// (`stray`), which are capped.
    pub(super) fn push(&self, node: &Arc<str>, frame: Frame, stray: bool) {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return;
        }
        if stray {
            if queue.strays >= MAX_STRAY_RESETS {
                return;
            }
            queue.strays += 1;
        }
        let frames = queue.nodes.entry(node.clone()).or_default();
        let was_empty = frames.is_empty();
        frames.push_back(Queued { frame, stray });
        if was_empty {
            queue.ready.push_back(node.clone());
        }
        drop(queue);
        self.wake.notify_one();
    }

    pub(super) fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    /// The frames for the next node, at most `max_batch` bytes of them (at
    /// least one).
    fn take(&self, max_batch: usize) -> Taken {
        let mut guard = lock(&self.queue);
        let queue = &mut *guard;
        let Some(node) = queue.ready.pop_front() else {
            return if queue.closed {
                Taken::Closed
            } else {
                Taken::Nothing
            };
        };
        let Some(frames) = queue.nodes.get_mut(&node) else {
            return Taken::Nothing;
        };
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(next) = frames.front() {
            let len = wire::frame_len(&next.frame);
            if !batch.is_empty() && size + len > max_batch {
                break;
            }
            size += len;
            let Some(queued) = frames.pop_front() else {
                break;
            };
            if queued.stray {
                queue.strays -= 1;
            }
            batch.push(queued.frame);
        }
        if frames.is_empty() {
            queue.nodes.remove(&node);
        } else {
            queue.ready.push_back(node.clone());
        }
        Taken::Batch(node, batch)
    }
}

/// What [`Outbox::take`] found.
enum Taken {
    /// Frames for a node.
    Batch(Arc<str>, Vec<Frame>),
    /// Nothing queued now.
    Nothing,
    /// Closed, and nothing queued.
    Closed,
}

/// Publishes queued frames, one envelope per node at a time, until the
/// outbox closes. Publishes are sequential, so frames to one node leave
/// in order; a busy node's frames wait in the queue and go out together.
pub(super) async fn publish_loop(
    store: Arc<dyn Store>,
    outbox: Arc<Outbox>,
    node: Arc<str>,
    tunnels: Weak<Tunnels>,
    max_batch: usize,
) {
    loop {
        let (to, frames) = match outbox.take(max_batch) {
            Taken::Batch(to, frames) => (to, frames),
            Taken::Nothing => {
                outbox.wake.notified().await;
                continue;
            }
            Taken::Closed => return,
        };
        let envelope = wire::Envelope::encode(&node, &frames);
        if let Err(error) = store.publish(&to, envelope).await {
            tracing::warn!(%error, "publishing tunnel frames failed: resetting the node's tunnels");
            if let Some(tunnels) = tunnels.upgrade() {
                tunnels.publish_failed(&to, &error.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cluster::tunnel::wire::Kind;

    fn frame(id: u64, payload: &'static [u8]) -> Frame {
        Frame {
            kind: Kind::Data,
            from_acceptor: false,
            id,
            payload: Bytes::from_static(payload),
        }
    }

    fn queued(outbox: &Outbox) -> usize {
        lock(&outbox.queue).nodes.values().map(VecDeque::len).sum()
    }

    #[test]
    fn answers_to_stray_frames_are_capped_and_the_cap_frees_up() {
        let outbox = Outbox::default();
        let x: Arc<str> = Arc::from("X");
        for id in 0..3 * MAX_STRAY_RESETS as u64 {
            outbox.push(&x, frame(id, b""), true);
        }
        assert_eq!(queued(&outbox), MAX_STRAY_RESETS);
        // Tunnel frames are not capped (the window bounds them).
        outbox.push(&x, frame(1, b"data"), false);
        assert_eq!(queued(&outbox), MAX_STRAY_RESETS + 1);
        // Published, they make room again.
        while let Taken::Batch(..) = outbox.take(1 << 20) {}
        outbox.push(&x, frame(7, b""), true);
        assert_eq!(queued(&outbox), 1);
    }

    #[test]
    fn batches_keep_each_nodes_order_within_the_size_and_take_turns() {
        let outbox = Outbox::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("A"), Arc::from("B"));
        for id in 0..10 {
            outbox.push(&a, frame(id, b"0123456789"), false);
        }
        outbox.push(&b, frame(100, b"x"), false);
        // 23 bytes a frame: three fit in 70.
        let mut order = Vec::new();
        loop {
            match outbox.take(70) {
                Taken::Batch(node, frames) => {
                    assert!(frames.iter().map(wire::frame_len).sum::<usize>() <= 70);
                    order.push((
                        node.to_string(),
                        frames.iter().map(|f| f.id).collect::<Vec<_>>(),
                    ));
                }
                Taken::Nothing => break,
                Taken::Closed => panic!("not closed"),
            }
        }
        let ids = |node: &str| -> Vec<u64> {
            order
                .iter()
                .filter(|(n, _)| n == node)
                .flat_map(|(_, ids)| ids.clone())
                .collect()
        };
        assert_eq!(ids("A"), (0..10).collect::<Vec<_>>());
        assert_eq!(ids("B"), [100]);
        // B did not wait for all of A's frames.
        assert_eq!(order[1].0, "B");
        // One frame larger than a batch still goes, alone.
        outbox.push(&a, frame(11, b"0123456789"), false);
        assert!(matches!(outbox.take(1), Taken::Batch(_, frames) if frames.len() == 1));
        outbox.close();
        assert!(matches!(outbox.take(1), Taken::Closed));
    }
}
