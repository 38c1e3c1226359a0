//! Session tests shared by the one-server and the cluster runs: each takes
//! the URL of a Redis (or Redis Cluster) and a prefix of its own.

#![allow(dead_code, missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_protocol::Message;
use holdfast_redis::RedisStore;
use holdfast_server::store::{
    NewSession, Owner, Position, Progress, Snapshot, Store, StoreError, StoredClose, Write, tag,
};

pub const LONG: Duration = Duration::from_secs(60);

pub async fn store(url: &str, prefix: &str) -> Arc<RedisStore> {
    match RedisStore::builder(url)
        .prefix(prefix)
        .node_ttl(Duration::from_millis(400))
        .command_timeout(Duration::from_millis(500))
        .connect()
        .await
    {
        Ok(store) => store,
        Err(error) => panic!("connect to {url}: {error}"),
    }
}

/// Waits until `check` says yes, polling, or panics at the deadline.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn session(id: &str) -> NewSession {
    NewSession {
        session_id: id.to_owned(),
        identity: Some("user-7".to_owned()),
        headers: vec![
            ("x-tenant".to_owned(), b"acme".to_vec()),
            ("cookie".to_owned(), vec![0, 159, 255, b'=', 1]),
        ],
    }
}

fn every_byte() -> Message {
    Message::binary((0..=255u8).collect::<Vec<u8>>())
}

pub fn out(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Message)> {
    range
        .map(|n| (n, Message::text(format!("out {n}"))))
        .collect()
}

pub fn inb(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Message)> {
    range
        .map(|n| (n, Message::binary(format!("in {n}").into_bytes())))
        .collect()
}

async fn expect_ok<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

/// The snapshot another node gets by claiming from the current owner.
async fn claim_now(store: &RedisStore, tag: &str) -> Snapshot {
    let owner = expect_ok("owner", store.owner(tag).await).await;
    expect_ok("claim", store.claim(tag, &owner, LONG).await).await
}

/// create, owner, write (everything a write carries), claim: the snapshot
/// holds exactly what was written, both kinds of message keep their kind
/// and bytes, identity and headers round-trip.
pub async fn round_trip(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let b = store(url, prefix).await;
    assert_ne!(a.node_id(), b.node_id(), "node ids are unique per start");
    let t = tag("round-trip");
    assert_eq!(a.create(&t, &session("s1"), LONG).await.ok(), Some(1));
    assert_eq!(
        a.owner(&t).await.ok(),
        Some(Owner::Node {
            node: a.node_id().to_owned(),
            epoch: 1
        })
    );
    let outbound = vec![
        (1, Message::text("héllo")),
        (2, every_byte()),
        (3, Message::text("")),
        (4, Message::binary(Vec::new())),
        (5, Message::binary(vec![b'x'; 100_000])),
    ];
    let write = Write {
        outbound: outbound.clone(),
        inbound: inb(1..=3),
        acked: None,
        progress: Some(Progress {
            done: 1,
            current: 2,
            sends: 1,
        }),
        opened: true,
        close: None,
        cursors: None,
    };
    expect_ok("write", a.write(&t, 1, &write, LONG).await).await;
    let snapshot = claim_now(&b, &t).await;
    assert_eq!(
        snapshot,
        Snapshot {
            session: session("s1"),
            epoch: 2,
            opened: true,
            acked: 0,
            outbound,
            received: 3,
            inbound: inb(2..=3),
            progress: Progress {
                done: 1,
                current: 2,
                sends: 1
            },
            close: None,
            cursors: Vec::new(),
        }
    );
    assert_eq!(
        b.owner(&t).await.ok(),
        Some(Owner::Node {
            node: b.node_id().to_owned(),
            epoch: 2
        })
    );

    // No identity, no headers, and a close.
    let t2 = tag("round-trip-2");
    let bare = NewSession {
        session_id: "s2".into(),
        identity: None,
        headers: Vec::new(),
    };
    expect_ok("create", a.create(&t2, &bare, LONG).await).await;
    let close = StoredClose {
        code: 4001,
        reason: "bye ✓".into(),
        by_client: true,
    };
    let write = Write {
        close: Some(close.clone()),
        ..Write::default()
    };
    expect_ok("write", a.write(&t2, 1, &write, LONG).await).await;
    let snapshot = claim_now(&b, &t2).await;
    assert_eq!(snapshot.session, bare);
    assert_eq!(snapshot.close, Some(close));
    assert!(!snapshot.opened);
    assert!(snapshot.outbound.is_empty() && snapshot.inbound.is_empty());

    // A create retried after its answer was lost succeeds; a create on a
    // tag another session has is refused.
    let t3 = tag("round-trip-3");
    expect_ok("create", a.create(&t3, &bare, LONG).await).await;
    assert_eq!(a.create(&t3, &bare, LONG).await.ok(), Some(1));
    assert!(matches!(
        b.create(&t3, &bare, LONG).await,
        Err(StoreError::Unavailable(m)) if m.contains("another session")
    ));
}

/// A write with an old epoch (or from another node) is refused and
/// changes nothing.
pub async fn fencing(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let b = store(url, prefix).await;
    let t = tag("fencing");
    expect_ok("create", a.create(&t, &session("f"), LONG).await).await;
    let first = Write {
        outbound: out(1..=2),
        opened: true,
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 1, &first, LONG).await).await;
    let taken = claim_now(&b, &t).await;
    assert_eq!(taken.epoch, 2);

    let late = Write {
        outbound: out(3..=4),
        inbound: inb(1..=1),
        acked: Some(2),
        progress: Some(Progress {
            done: 0,
            current: 1,
            sends: 0,
        }),
        opened: true,
        close: Some(StoredClose {
            code: 1000,
            reason: "x".into(),
            by_client: false,
        }),
        cursors: Some(vec![(
            "late".into(),
            Position {
                epoch: 1,
                offset: 1,
            },
        )]),
    };
    assert!(matches!(
        a.write(&t, 1, &late, LONG).await,
        Err(StoreError::Fenced)
    ));
    // The right epoch from the wrong node is fenced too.
    assert!(matches!(
        a.write(&t, 2, &late, LONG).await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(a.release(&t, 1).await, Err(StoreError::Fenced)));
    assert!(matches!(a.remove(&t, 1).await, Err(StoreError::Fenced)));
    // Touch from the old owner does not extend the session either (checked
    // through the snapshot below being unchanged; TTLs in the server test).
    expect_ok("touch", a.touch(std::slice::from_ref(&t), LONG).await).await;

    let again = claim_now(&b, &t).await;
    assert_eq!(again, Snapshot { epoch: 3, ..taken });
}

fn at(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

/// Topic cursors are stored with the write that carries them, come back
/// with a claim on another node, are replaced whole by the next write that
/// carries some and kept by one that does not; a fenced write or one with
/// a bad topic name changes none.
pub async fn cursors(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let b = store(url, prefix).await;
    let t = tag("cursors");
    expect_ok("create", a.create(&t, &session("c"), LONG).await).await;
    let first = vec![
        ("chat:lobby".to_owned(), at(7, 3)),
        ("x".repeat(200), at(9_007_199_254_740_991, u64::MAX >> 12)),
    ];
    let write = Write {
        outbound: out(1..=2),
        cursors: Some(first.clone()),
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 1, &write, LONG).await).await;
    let taken = claim_now(&b, &t).await;
    assert_eq!(taken.cursors, first);

    // The old owner is fenced: no cursor changes.
    let late = Write {
        cursors: Some(vec![("chat:lobby".to_owned(), at(7, 4))]),
        ..Write::default()
    };
    assert!(matches!(
        a.write(&t, 1, &late, LONG).await,
        Err(StoreError::Fenced)
    ));
    // A write without cursors keeps them; a bad name is refused whole.
    let more = Write {
        outbound: out(3..=3),
        ..Write::default()
    };
    expect_ok("write", b.write(&t, 2, &more, LONG).await).await;
    let bad = Write {
        outbound: out(4..=4),
        cursors: Some(vec![("has space".to_owned(), at(1, 1))]),
        ..Write::default()
    };
    assert!(matches!(
        b.write(&t, 2, &bad, LONG).await,
        Err(StoreError::Unavailable(m)) if m.contains("topic name")
    ));
    let again = claim_now(&a, &t).await;
    assert_eq!(again.cursors, first);
    assert_eq!(again.outbound, out(1..=3));

    // Some replaces the whole set (here with one, then with none).
    let one = vec![("b".to_owned(), at(2, 1))];
    let write = Write {
        cursors: Some(one.clone()),
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 3, &write, LONG).await).await;
    assert_eq!(claim_now(&b, &t).await.cursors, one);
    let none = Write {
        cursors: Some(Vec::new()),
        ..Write::default()
    };
    expect_ok("write", b.write(&t, 4, &none, LONG).await).await;
    assert!(claim_now(&a, &t).await.cursors.is_empty());
}

/// Two claims from the same owner read: exactly one wins.
pub async fn claim_is_compare_and_set(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let b = store(url, prefix).await;
    let c = store(url, prefix).await;
    let t = tag("cas");
    expect_ok("create", a.create(&t, &session("c"), LONG).await).await;
    let read = expect_ok("owner", b.owner(&t).await).await;
    let (by_b, by_c) = tokio::join!(b.claim(&t, &read, LONG), c.claim(&t, &read, LONG));
    let wins = [&by_b, &by_c].iter().filter(|r| r.is_ok()).count();
    let fenced = [&by_b, &by_c]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Fenced)))
        .count();
    assert_eq!((wins, fenced), (1, 1), "{by_b:?} / {by_c:?}");
    let winner = if by_b.is_ok() {
        b.node_id()
    } else {
        c.node_id()
    };
    assert_eq!(
        a.owner(&t).await.ok(),
        Some(Owner::Node {
            node: winner.to_owned(),
            epoch: 2
        })
    );
    // A stale read of any kind is fenced; no session is NotFound.
    assert!(matches!(
        b.claim(&t, &Owner::Unknown, LONG).await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(
        b.claim(&t, &Owner::Released { epoch: 2 }, LONG).await,
        Err(StoreError::Fenced)
    ));
    let missing = tag("cas-missing");
    assert_eq!(a.owner(&missing).await.ok(), Some(Owner::Unknown));
    assert!(matches!(
        a.claim(&missing, &Owner::Unknown, LONG).await,
        Err(StoreError::NotFound)
    ));
}

/// A gap is refused and changes nothing; a retried write applies once;
/// messages not consecutive inside a write are refused.
pub async fn gaps_refused(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let t = tag("gaps");
    expect_ok("create", a.create(&t, &session("g"), LONG).await).await;
    let first = Write {
        outbound: out(1..=3),
        inbound: inb(1..=2),
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 1, &first, LONG).await).await;
    // Retried (its answer lost): nothing doubled.
    expect_ok("retry", a.write(&t, 1, &first, LONG).await).await;
    // Overlapping: only the new part is added.
    let overlap = Write {
        outbound: out(2..=4),
        ..Write::default()
    };
    expect_ok("overlap", a.write(&t, 1, &overlap, LONG).await).await;

    let gap_out = Write {
        outbound: out(6..=6),
        inbound: inb(3..=3),
        ..Write::default()
    };
    match a.write(&t, 1, &gap_out, LONG).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("gap") && m.contains("6"), "{m}"),
        other => panic!("a gap was not refused: {other:?}"),
    }
    let gap_in = Write {
        inbound: inb(4..=4),
        acked: Some(1),
        ..Write::default()
    };
    assert!(matches!(
        a.write(&t, 1, &gap_in, LONG).await,
        Err(StoreError::Unavailable(_))
    ));
    let mut holes = out(5..=6);
    holes.push((8, Message::text("8")));
    let holes = Write {
        outbound: holes,
        ..Write::default()
    };
    assert!(matches!(
        a.write(&t, 1, &holes, LONG).await,
        Err(StoreError::Unavailable(_))
    ));
    let zero = Write {
        outbound: vec![(0, Message::text("0"))],
        ..Write::default()
    };
    assert!(matches!(
        a.write(&t, 1, &zero, LONG).await,
        Err(StoreError::Unavailable(_))
    ));

    let snapshot = claim_now(&a, &t).await;
    assert_eq!(snapshot.outbound, out(1..=4));
    assert_eq!(snapshot.inbound, inb(1..=2));
    assert_eq!((snapshot.acked, snapshot.received), (0, 2));
}

/// `acked` drops outbound messages up to it, `progress.done` inbound ones;
/// neither goes back; neither may pass what is stored.
pub async fn acked_and_progress_trim(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let t = tag("trim");
    expect_ok("create", a.create(&t, &session("t"), LONG).await).await;
    let write = Write {
        outbound: out(1..=5),
        inbound: inb(1..=4),
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 1, &write, LONG).await).await;
    let trim = Write {
        acked: Some(3),
        progress: Some(Progress {
            done: 2,
            current: 3,
            sends: 2,
        }),
        ..Write::default()
    };
    expect_ok("trim", a.write(&t, 1, &trim, LONG).await).await;
    let snapshot = claim_now(&a, &t).await;
    assert_eq!((snapshot.acked, snapshot.outbound.clone()), (3, out(4..=5)));
    assert_eq!(
        (snapshot.progress.done, snapshot.inbound.clone()),
        (2, inb(3..=4))
    );
    assert_eq!(
        snapshot.progress,
        Progress {
            done: 2,
            current: 3,
            sends: 2
        }
    );
    let epoch = snapshot.epoch;

    // Older acks and progress do not bring anything back.
    let older = Write {
        acked: Some(1),
        progress: Some(Progress {
            done: 1,
            current: 0,
            sends: 0,
        }),
        ..Write::default()
    };
    expect_ok("older", a.write(&t, epoch, &older, LONG).await).await;
    // Everything acked, everything processed, in the same write as new ones.
    let all = Write {
        outbound: out(6..=6),
        inbound: inb(5..=5),
        acked: Some(6),
        progress: Some(Progress {
            done: 5,
            current: 0,
            sends: 0,
        }),
        ..Write::default()
    };
    expect_ok("all", a.write(&t, epoch, &all, LONG).await).await;
    let past_out = Write {
        acked: Some(7),
        ..Write::default()
    };
    assert!(
        matches!(a.write(&t, epoch, &past_out, LONG).await, Err(StoreError::Unavailable(m)) if m.contains("past"))
    );
    let past_in = Write {
        progress: Some(Progress {
            done: 6,
            current: 0,
            sends: 0,
        }),
        ..Write::default()
    };
    assert!(matches!(
        a.write(&t, epoch, &past_in, LONG).await,
        Err(StoreError::Unavailable(_))
    ));

    let snapshot = claim_now(&a, &t).await;
    assert_eq!((snapshot.acked, snapshot.outbound.len()), (6, 0));
    assert_eq!((snapshot.received, snapshot.inbound.len()), (5, 0));
    assert_eq!(
        snapshot.progress,
        Progress {
            done: 5,
            current: 0,
            sends: 0
        }
    );

    // New messages after a full trim number on.
    let more = Write {
        outbound: out(7..=8),
        inbound: inb(6..=6),
        ..Write::default()
    };
    expect_ok("more", a.write(&t, snapshot.epoch, &more, LONG).await).await;
    let snapshot = claim_now(&a, &t).await;
    assert_eq!(snapshot.outbound, out(7..=8));
    assert_eq!(snapshot.inbound, inb(6..=6));
}

/// release: the next claim is from `Released`; writes after it are fenced.
/// remove: the session is gone.
pub async fn release_and_remove(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let b = store(url, prefix).await;
    let t = tag("release");
    expect_ok("create", a.create(&t, &session("r"), LONG).await).await;
    assert!(matches!(a.release(&t, 2).await, Err(StoreError::Fenced)));
    expect_ok("release", a.release(&t, 1).await).await;
    assert_eq!(a.owner(&t).await.ok(), Some(Owner::Released { epoch: 1 }));
    let write = Write {
        outbound: out(1..=1),
        ..Write::default()
    };
    assert!(matches!(
        a.write(&t, 1, &write, LONG).await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(a.release(&t, 1).await, Err(StoreError::Fenced)));
    let snapshot = expect_ok(
        "claim",
        b.claim(&t, &Owner::Released { epoch: 1 }, LONG).await,
    )
    .await;
    assert_eq!((snapshot.epoch, snapshot.outbound.len()), (2, 0));
    expect_ok("write", b.write(&t, 2, &write, LONG).await).await;
    assert!(matches!(b.remove(&t, 1).await, Err(StoreError::Fenced)));
    expect_ok("remove", b.remove(&t, 2).await).await;
    assert_eq!(b.owner(&t).await.ok(), Some(Owner::Unknown));
    assert!(matches!(
        b.write(&t, 2, &write, LONG).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(b.remove(&t, 2).await, Err(StoreError::NotFound)));
    assert!(matches!(b.release(&t, 2).await, Err(StoreError::NotFound)));
    // The tag is free again.
    assert_eq!(a.create(&t, &session("r2"), LONG).await.ok(), Some(1));
}

/// Sessions expire `ttl` after their last write; `touch` moves that for
/// many tags at once (here: shortens it, so the test waits on the expiry).
pub async fn ttl_and_touch(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let short = Duration::from_millis(300);
    let t = tag("ttl");
    expect_ok("create", a.create(&t, &session("e"), short).await).await;
    let write = Write {
        outbound: out(1..=2),
        inbound: inb(1..=1),
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 1, &write, short).await).await;
    let started = Instant::now();
    eventually("the session expires", Duration::from_secs(5), || async {
        a.owner(&t).await.ok() == Some(Owner::Unknown)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "expired too early"
    );
    assert!(matches!(
        a.write(&t, 1, &write, short).await,
        Err(StoreError::NotFound)
    ));

    // Many tags (on different slots in a cluster), all touched at once.
    let tags: Vec<String> = (0..40).map(|n| tag(&format!("ttl-{n}"))).collect();
    for t in &tags {
        expect_ok("create", a.create(t, &session("m"), LONG).await).await;
        let write = Write {
            outbound: out(1..=1),
            ..Write::default()
        };
        expect_ok("write", a.write(t, 1, &write, LONG).await).await;
    }
    expect_ok("touch", a.touch(&tags, short).await).await;
    eventually(
        "every touched session expires",
        Duration::from_secs(5),
        || async {
            for t in &tags {
                if a.owner(t).await.ok() != Some(Owner::Unknown) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // Touching sessions that are gone is not an error.
    expect_ok("touch gone", a.touch(&tags, LONG).await).await;
}

/// A write of thousands of messages (more than one `RPUSH` batch inside
/// the script) is stored whole and in order.
pub async fn big_write(url: &str, prefix: &str) {
    let a = store(url, prefix).await;
    let t = tag("big");
    expect_ok("create", a.create(&t, &session("b"), LONG).await).await;
    let write = Write {
        outbound: out(1..=2500),
        inbound: inb(1..=1001),
        ..Write::default()
    };
    expect_ok("write", a.write(&t, 1, &write, LONG).await).await;
    let snapshot = claim_now(&a, &t).await;
    assert_eq!(snapshot.outbound, out(1..=2500));
    assert_eq!(snapshot.inbound, inb(1..=1001));
}

/// Every session test, one after the other (for one cluster).
pub async fn all(url: &str, prefix: &str) {
    round_trip(url, &format!("{prefix}-rt")).await;
    fencing(url, &format!("{prefix}-f")).await;
    cursors(url, &format!("{prefix}-cur")).await;
    claim_is_compare_and_set(url, &format!("{prefix}-c")).await;
    gaps_refused(url, &format!("{prefix}-g")).await;
    acked_and_progress_trim(url, &format!("{prefix}-t")).await;
    release_and_remove(url, &format!("{prefix}-r")).await;
    ttl_and_touch(url, &format!("{prefix}-e")).await;
    big_write(url, &format!("{prefix}-b")).await;
}
