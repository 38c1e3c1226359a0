//! One test per behaviour of the hostile proxy, against in-process
//! upstreams, on loopback, with bounded waits.

mod support;

use std::time::Duration;

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use holdfast_testkit::{After, Answer, Behavior, PathFilter, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use support::*;

#[tokio::test]
async fn transparent_reverse_proxy_forwards_http_websocket_and_bodies() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();
    let client = direct_client();

    let (status, body) = fetch(&client, &format!("{}/realtime/plain?v=1", proxy.url())).await;
    assert_eq!((status, body.as_str()), (200, "hello from /realtime/plain"));

    let res = within(
        "POST",
        client
            .post(format!("{}/realtime/send", proxy.url()))
            .body("[{\"t\":\"ping\"}]")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "[{\"t\":\"ping\"}]");

    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    echo(&mut ws, "hello").await;
    ws.close(None).await.unwrap();
    drop(ws);

    let stats = proxy.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.requests_to("/plain"), 1);
    assert_eq!(stats.requests_to("/send"), 1);
    assert_eq!(stats.requests_to("/ws"), 1);
    assert_eq!((stats.upgrade_requests, stats.upgrades), (1, 1));
    assert_eq!((stats.connects, stats.cut), (0, 0));
    assert!(stats.bytes_up > 0 && stats.bytes_down > 0, "{stats:?}");
    within("all connections closed", proxy.wait_until(|s| s.live == 0)).await;
}

#[tokio::test]
async fn refused_upgrade_answers_the_status_with_an_html_page() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().refuse_upgrades(403))
        .start()
        .await
        .unwrap();

    let (status, body) = refusal(ws_connect(proxy.addr()).await);
    assert_eq!(status, 403);
    assert!(
        body.contains("<html>") && body.contains("403 Forbidden"),
        "{body}"
    );

    proxy.set(Behavior::default().refuse_upgrades(400));
    assert_eq!(refusal(ws_connect(proxy.addr()).await).0, 400);

    // Plain HTTP is untouched.
    let (status, _) = fetch(&direct_client(), &format!("{}/realtime/poll", proxy.url())).await;
    assert_eq!(status, 200);
    let stats = proxy.stats();
    assert_eq!((stats.upgrade_requests, stats.upgrades), (2, 0));
}

#[tokio::test]
async fn silent_after_upgrade_passes_the_101_then_nothing() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();

    // At once: the upgrade succeeds, the server's first frame never comes,
    // and the socket stays open (no close, no error).
    proxy.set(Behavior::default().silence_after_upgrade(After::IMMEDIATELY));
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_quiet(&mut ws).await;
    ws.send(Message::text("anyone?")).await.unwrap();
    assert_quiet(&mut ws).await;
    assert_eq!(proxy.stats().upgrades, 1);

    // After N bytes: exactly the 6 bytes of the `open` frame get through.
    proxy.set(Behavior::default().silence_after_upgrade(After::bytes(6)));
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    ws.send(Message::text("echo?")).await.unwrap();
    assert_quiet(&mut ws).await;

    // After T ms: works until then, silent after.
    proxy.set(Behavior::default().silence_after_upgrade(After::millis(100)));
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    tokio::time::sleep(Duration::from_millis(150)).await; // past the proxy's deadline
    ws.send(Message::text("echo?")).await.unwrap();
    assert_quiet(&mut ws).await;
    assert_eq!(proxy.stats().cut, 0);
}

#[tokio::test]
async fn reset_after_upgrade_breaks_the_stream() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().reset_after_upgrade(After::millis(100)))
        .start()
        .await
        .unwrap();

    let started = Instant::now();
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    match within("the reset", ws.next()).await {
        Some(Err(_)) | None => {}
        Some(Ok(m)) => panic!("expected the stream to break, got {m:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));

    // After N bytes: at most the `open` frame, then the stream breaks.
    proxy.set(Behavior::default().reset_after_upgrade(After::bytes(6)));
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    let mut messages = 0;
    loop {
        match within("the reset", ws.next()).await {
            Some(Ok(Message::Text(t))) if t.as_str() == "open" && messages == 0 => messages += 1,
            Some(Err(_)) | None => break,
            Some(Ok(m)) => panic!("expected the stream to break, got {m:?}"),
        }
    }
    let stats = within("both resets counted", proxy.wait_until(|s| s.cut == 2)).await;
    assert_eq!(stats.upgrades, 2);

    // The reset is a TCP reset, seen by a raw client as an error.
    proxy.set(Behavior::default().reset_after_upgrade(After::millis(50)));
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(
        b"GET /realtime/ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, _, _) = read_head(&mut tcp).await;
    assert_eq!(status, 101);
    let err = within("the reset", async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => panic!("clean EOF instead of a reset"),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await;
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn error_pages_answer_instead_of_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().error_page(504, PathFilter::ends_with("/sse")))
        .start()
        .await
        .unwrap();

    let raw = exchange(proxy.addr(), &get_request("/realtime/sse?v=1&key=k")).await;
    let (status, head, body) = split(&raw);
    assert_eq!(status, 504);
    assert!(head.contains("Content-Type: text/html"), "{head}");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("504 Gateway Timeout"), "{body}");
    // Other paths pass.
    let (status, body) = fetch(&direct_client(), &format!("{}/realtime/poll", proxy.url())).await;
    assert_eq!((status, body.as_str()), (200, "hello from /realtime/poll"));

    // Everything, WebSocket upgrades included.
    proxy.set(Behavior::default().error_page(502, PathFilter::Any));
    let (status, body) = fetch(&direct_client(), &format!("{}/realtime/poll", proxy.url())).await;
    assert_eq!(status, 502);
    assert!(body.contains("<h1>502 Bad Gateway</h1>"), "{body}");
    let (status, _) = refusal(ws_connect(proxy.addr()).await);
    assert_eq!(status, 502);

    let stats = proxy.stats();
    assert_eq!(
        (
            stats.requests_to("/sse"),
            stats.requests_to("/poll"),
            stats.upgrades
        ),
        (1, 2, 0)
    );
}

/// The body of a chunked response carrying `n` bytes in one chunk.
fn chunk(n: usize) -> Vec<u8> {
    let mut out = format!("{n:X}\r\n").into_bytes();
    out.extend(std::iter::repeat_n(b'a', n));
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn buffering_holds_the_body_until_n_bytes_or_the_end() {
    let mut upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().buffer_responses(100, PathFilter::ends_with("/stream")))
        .start()
        .await
        .unwrap();
    let data = Bytes::from(vec![b'a'; 30]);

    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&get_request("/realtime/stream"))
        .await
        .unwrap();
    let events = upstream.next_stream().await;
    events.send(data.clone()).unwrap();
    // The head passes at once, the first 36 bytes of body are held.
    let (status, head, early) = read_head(&mut tcp).await;
    assert_eq!(status, 200);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(early.is_empty(), "body bytes came with the head");
    let mut buf = [0u8; 1024];
    if let Ok(got) = timeout(QUIET, tcp.read(&mut buf)).await {
        panic!("the body should be held, read {got:?}");
    }
    // 72, then 108 bytes held: released together once past 100.
    events.send(data.clone()).unwrap();
    events.send(data.clone()).unwrap();
    let mut body = vec![0u8; 108];
    within("the first 100 bytes", tcp.read_exact(&mut body))
        .await
        .unwrap();
    assert_eq!(body, [chunk(30), chunk(30), chunk(30)].concat());
    // Whatever is held when the upstream ends goes out then.
    events.send(Bytes::from_static(b"0123456789")).unwrap();
    drop(events);
    let rest = read_to_end(&mut tcp).await;
    assert_eq!(rest, b"A\r\n0123456789\r\n0\r\n\r\n");

    // The filter: other paths stream through.
    proxy.set(Behavior::default().buffer_responses(100, PathFilter::ends_with("/sse")));
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&get_request("/realtime/stream"))
        .await
        .unwrap();
    let events = upstream.next_stream().await;
    events.send(data.clone()).unwrap();
    let (_, _, mut body) = read_head(&mut tcp).await;
    let mut more = vec![0u8; 36 - body.len()];
    within("an unbuffered chunk", tcp.read_exact(&mut more))
        .await
        .unwrap();
    body.extend(more);
    assert_eq!(body, chunk(30));
}

#[tokio::test]
async fn cuts_after_n_bytes_or_t_ms_optionally_seeded() {
    let mut upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().cut_after(After::bytes(1000)))
        .start()
        .await
        .unwrap();

    // Exactly 1000 bytes of a 10 000-byte response, then the end.
    let raw = exchange(proxy.addr(), &get_request("/realtime/big")).await;
    assert_eq!(raw.len(), 1000);
    assert_eq!(split(&raw).0, 200);

    // An idle stream is cut by age.
    proxy.set(Behavior::default().cut_after(After::millis(150)));
    let started = Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(&get_request("/realtime/stream"))
        .await
        .unwrap();
    let _events = upstream.next_stream().await;
    let raw = read_to_end(&mut tcp).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(split(&raw).0, 200);
    assert_eq!(proxy.stats().cut, 2);

    // Seeded: each connection its own limit in 1..=N, the same for the same
    // seed and connection order.
    async fn lengths(upstream: std::net::SocketAddr, seed: u64) -> Vec<usize> {
        let proxy = Proxy::builder()
            .upstream(upstream)
            .behavior(Behavior::default().cut_randomly(After::bytes(3000), seed))
            .start()
            .await
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(
                exchange(proxy.addr(), &get_request("/realtime/big"))
                    .await
                    .len(),
            );
        }
        out
    }
    let first = lengths(upstream.addr, 7).await;
    assert!(first.iter().all(|&n| (1..=3000).contains(&n)), "{first:?}");
    assert!(first.iter().any(|&n| n != first[0]), "{first:?}");
    assert_eq!(lengths(upstream.addr, 7).await, first);
    assert_ne!(lengths(upstream.addr, 8).await, first);
}

#[tokio::test]
async fn latency_delays_every_chunk_each_way() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().latency(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();

    // Request up (100), response head and body down (100 + 100).
    let started = Instant::now();
    let raw = exchange(proxy.addr(), &get_request("/realtime/plain")).await;
    assert_eq!(split(&raw).0, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // A WebSocket round trip: 100 up, 100 down.
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    let started = Instant::now();
    echo(&mut ws, "x").await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn refused_connect_leaves_plain_http_to_the_client() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .behavior(Behavior::default().refuse_connect(403))
        .start()
        .await
        .unwrap();

    assert_eq!(
        connect_tunnel(proxy.addr(), upstream.addr).await.err(),
        Some(403)
    );
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", upstream.addr).as_bytes())
        .await
        .unwrap();
    let (status, head, body) = split(&read_to_end(&mut tcp).await);
    assert_eq!(status, 403);
    assert!(head.contains("text/html"));
    assert!(String::from_utf8(body).unwrap().contains("403 Forbidden"));

    // What a client falls back to: absolute-form plain HTTP still works.
    let url = format!("http://{}/realtime/poll", upstream.addr);
    let (status, body) = fetch(&proxied_client(&proxy.url()), &url).await;
    assert_eq!((status, body.as_str()), (200, "hello from /realtime/poll"));
    let stats = proxy.stats();
    assert_eq!((stats.connects, stats.requests_to("/poll")), (2, 1));
}

#[tokio::test]
async fn forward_proxy_serves_absolute_form_and_connect() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_forward().await.unwrap();
    let client = proxied_client(&proxy.url());

    // Absolute-form GET and POST (what reqwest sends to an HTTP proxy).
    let url = format!("http://{}/realtime/plain?v=1", upstream.addr);
    let (status, body) = fetch(&client, &url).await;
    assert_eq!((status, body.as_str()), (200, "hello from /realtime/plain"));
    let res = within(
        "POST",
        client
            .post(format!("http://{}/realtime/send", upstream.addr))
            .body("[]")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(res.text().await.unwrap(), "[]");

    // WebSocket through CONNECT.
    let mut ws = ws_through_connect(proxy.addr(), upstream.addr)
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    echo(&mut ws, "tunnelled").await;
    let stats = proxy.stats();
    assert_eq!((stats.connects, stats.upgrades), (1, 1));
    assert_eq!(stats.requests_to("/plain") + stats.requests_to("/send"), 2);
    assert_eq!(stats.requests_to("/ws"), 1);

    // Behaviours reach plain HTTP inside a tunnel.
    proxy.set(Behavior::default().refuse_upgrades(403));
    match ws_through_connect(proxy.addr(), upstream.addr).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }

    // Loopback only; and no reverse upstream in forward-only mode.
    assert_eq!(
        connect_tunnel(proxy.addr(), "10.255.255.1:80").await.err(),
        Some(502)
    );
    let raw = exchange(proxy.addr(), &get_request("/realtime/plain")).await;
    assert_eq!(split(&raw).0, 502);
}

#[tokio::test]
async fn set_changes_the_behaviour_of_live_and_new_connections() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();

    let mut live = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut live).await, "open");
    echo(&mut live, "one").await;

    // The live tunnel goes silent, new upgrades too.
    proxy.set(Behavior::default().silence_after_upgrade(After::IMMEDIATELY));
    live.send(Message::text("two")).await.unwrap();
    assert_quiet(&mut live).await;
    let mut fresh = ws_connect(proxy.addr()).await.unwrap();
    assert_quiet(&mut fresh).await;

    // New upgrades are refused.
    proxy.set(Behavior::default().refuse_upgrades(403));
    assert_eq!(proxy.behavior(), Behavior::default().refuse_upgrades(403));
    assert_eq!(refusal(ws_connect(proxy.addr()).await).0, 403);

    // A live connection past a byte limit set now is cut at once.
    proxy.set(Behavior::default());
    let mut last = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut last).await, "open");
    echo(&mut last, "three").await;
    proxy.set(Behavior::default().cut_after(After::bytes(10)));
    match within("the cut", last.next()).await {
        Some(Err(_)) | None => {}
        Some(Ok(m)) => panic!("expected the end, got {m:?}"),
    }

    // Back to transparent for new connections.
    proxy.set(Behavior::default());
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    echo(&mut ws, "four").await;
}

#[tokio::test]
async fn cut_all_ends_every_live_connection_now() {
    let mut upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();

    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    let mut tunnel = ws_through_connect(proxy.addr(), upstream.addr)
        .await
        .unwrap();
    assert_eq!(next_text(&mut tunnel).await, "open");
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(&get_request("/realtime/stream"))
        .await
        .unwrap();
    let _events = upstream.next_stream().await;
    let (status, _, _) = read_head(&mut stream).await;
    assert_eq!(status, 200);
    assert_eq!(proxy.stats().live, 3);

    proxy.cut_all();
    match within("the WebSocket to end", ws.next()).await {
        Some(Err(_)) | None => {}
        Some(Ok(m)) => panic!("expected the end, got {m:?}"),
    }
    match within("the tunnel to end", tunnel.next()).await {
        Some(Err(_)) | None => {}
        Some(Ok(m)) => panic!("expected the end, got {m:?}"),
    }
    read_to_end(&mut stream).await;
    let stats = within("all cut", proxy.wait_until(|s| s.live == 0)).await;
    assert_eq!(stats.cut, 3);

    // New connections are not affected.
    let (status, _) = fetch(&direct_client(), &format!("{}/realtime/poll", proxy.url())).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn dropping_the_proxy_ends_its_connections_and_listener() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .behavior(Behavior::default().silence_after_upgrade(After::bytes(6)))
        .start()
        .await
        .unwrap();
    let addr = proxy.addr();
    let mut ws = ws_connect(addr).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");

    drop(proxy);
    // Even a silenced tunnel, which never passes a close on, ends.
    match within("the WebSocket to end", ws.next()).await {
        Some(Err(_)) | None => {}
        Some(Ok(m)) => panic!("expected the end, got {m:?}"),
    }
    within("the listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn bad_input_gets_an_answer_not_a_panic() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();
    let status = |raw: Vec<u8>| split(&raw).0;

    assert_eq!(
        status(exchange(proxy.addr(), b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await),
        400
    );
    let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70_000));
    assert_eq!(status(exchange(proxy.addr(), &huge).await), 431);
    assert_eq!(
        status(exchange(proxy.addr(), b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n").await),
        400
    );
    assert_eq!(
        status(exchange(proxy.addr(), b"CONNECT nowhere HTTP/1.1\r\n\r\n").await),
        400
    );
    // A head cut short: the connection just ends.
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"GET / HT").await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(read_to_end(&mut tcp).await.is_empty());

    // An upstream that is down: 502.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dead_proxy = Proxy::start(dead).await.unwrap();
    assert_eq!(
        status(exchange(dead_proxy.addr(), &get_request("/realtime/poll")).await),
        502
    );

    // Still serving.
    let (status, _) = fetch(&direct_client(), &format!("{}/realtime/poll", proxy.url())).await;
    assert_eq!(status, 200);
}

/// `POST <path>` with `body`.
fn post_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn answers_take_matching_requests_until_they_run_out_or_are_withdrawn() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();

    // A server refusing sends twice, then the real one answers.
    proxy.answer(
        Answer::new(503)
            .method("POST")
            .paths(PathFilter::ends_with("/send"))
            .json(r#"[{"t":"detach","code":4503}]"#)
            .header(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            )
            .times(2),
    );
    for _ in 0..2 {
        let raw = exchange(proxy.addr(), &post_request("/realtime/send", b"[]")).await;
        let (status, head, body) = split(&raw);
        assert_eq!(status, 503);
        assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
        assert!(head.contains("application/json"), "{head}");
        assert_eq!(body, br#"[{"t":"detach","code":4503}]"#);
    }
    // Other methods and paths were never taken; now the sends go through.
    let (status, _, _) = split(&exchange(proxy.addr(), &get_request("/realtime/send")).await);
    assert_eq!(
        status, 405,
        "GET reaches the upstream (which takes POST only)"
    );
    let raw = exchange(proxy.addr(), &post_request("/realtime/send", b"[1]")).await;
    assert_eq!(split(&raw).2, b"[1]");

    // Upgrades are answered too: a gateway error page, once.
    proxy.answer(
        Answer::new(502)
            .paths(PathFilter::ends_with("/ws"))
            .times(1),
    );
    let (status, body) = refusal(ws_connect(proxy.addr()).await);
    assert_eq!(status, 502);
    assert!(body.contains("502 Bad Gateway"), "{body}");
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");

    // Until withdrawn: every request.
    let id = proxy.answer(Answer::new(405).empty());
    for _ in 0..3 {
        let (status, _, body) = split(&exchange(proxy.addr(), &get_request("/a")).await);
        assert_eq!((status, body.len()), (405, 0));
    }
    assert!(proxy.withdraw(id));
    assert!(!proxy.withdraw(id), "already withdrawn");
    let (status, _, body) = split(&exchange(proxy.addr(), &get_request("/a")).await);
    assert_eq!((status, body.as_slice()), (200, &b"hello from /a"[..]));

    let stats = proxy.stats();
    assert_eq!(stats.requests_to("/send"), 4, "answered requests count");
    assert_eq!(stats.requests_to("/a"), 4);
    assert_eq!((stats.upgrade_requests, stats.upgrades), (2, 1));
}

#[tokio::test]
async fn cut_paths_ends_only_the_matching_requests() {
    let mut upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();
    let mut ws = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "open");
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(&get_request("/realtime/stream"))
        .await
        .unwrap();
    let _events = upstream.next_stream().await;
    assert_eq!(read_head(&mut stream).await.0, 200);

    proxy.cut_paths(&PathFilter::ends_with("/stream"));
    read_to_end(&mut stream).await;
    let stats = within("the stream cut", proxy.wait_until(|s| s.live == 1)).await;
    assert_eq!(stats.cut, 1);
    echo(&mut ws, "still here").await;

    // Later requests to the path are not affected.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(&get_request("/realtime/stream"))
        .await
        .unwrap();
    let events = upstream.next_stream().await;
    let (status, _, _) = read_head(&mut stream).await;
    assert_eq!(status, 200);
    events.send(Bytes::from_static(b"data: x\n\n")).unwrap();
    drop(events);
    let rest = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(rest.contains("data: x"), "{rest:?}");
}

#[tokio::test]
async fn silence_tunnels_silences_the_open_ones_only() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();
    let mut old = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut old).await, "open");
    // Not a tunnel yet: a request still under way is left alone.
    let mut pending = TcpStream::connect(proxy.addr()).await.unwrap();

    proxy.silence_tunnels();
    old.send(Message::text("anyone?")).await.unwrap();
    assert_quiet(&mut old).await;

    let mut new = ws_connect(proxy.addr()).await.unwrap();
    assert_eq!(next_text(&mut new).await, "open");
    echo(&mut new, "fine").await;
    pending
        .write_all(&get_request("/realtime/plain"))
        .await
        .unwrap();
    let (status, _, body) = split(&read_to_end(&mut pending).await);
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"hello from /realtime/plain"[..])
    );
    assert_eq!(proxy.stats().cut, 0);
}

#[tokio::test]
async fn routes_send_a_path_prefix_to_another_upstream() {
    let upstream = Upstream::start().await;
    // The second server: answers one request with a mark of its own.
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages_addr = pages.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = pages.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let body = format!("pages saw {}", head.lines().next().unwrap_or(""));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.write_all(answer.as_bytes()).await;
    });
    let proxy = Proxy::builder()
        .upstream(upstream.addr)
        .route("/test/", pages_addr)
        .start()
        .await
        .unwrap();
    let (status, body) = fetch(&direct_client(), &format!("{}/test/a.html?x", proxy.url())).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "pages saw GET /test/a.html?x HTTP/1.1")
    );
    let (status, body) = fetch(&direct_client(), &format!("{}/testing", proxy.url())).await;
    assert_eq!((status, body.as_str()), (200, "hello from /testing"));
}

#[tokio::test]
async fn stats_count_probes_open_requests_and_largest_bodies() {
    let mut upstream = Upstream::start().await;
    let proxy = Proxy::start(upstream.addr).await.unwrap();
    let mut streams = Vec::new();
    for path in ["/realtime/stream?probe=1", "/realtime/stream?x=1&probe=1"] {
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        tcp.write_all(&get_request(path)).await.unwrap();
        let events = upstream.next_stream().await;
        assert_eq!(read_head(&mut tcp).await.0, 200);
        streams.push((tcp, events));
    }
    let _ = exchange(proxy.addr(), &get_request("/realtime/plain?probe=10")).await;
    let stats = proxy.stats();
    assert_eq!(stats.probes, 2, "probe=1 only");
    assert_eq!(stats.open_to("/stream"), 2);
    assert_eq!(stats.max_open_to("/stream"), 2);
    assert_eq!(stats.max_live, 3, "the two streams and the plain request");

    // One stream ends: open goes down, the high-water marks stay until reset.
    let (mut tcp, events) = streams.pop().unwrap();
    drop(events);
    read_to_end(&mut tcp).await;
    let stats = within(
        "one stream ended",
        proxy.wait_until(|s| s.open_to("/stream") == 1),
    )
    .await;
    assert_eq!(stats.max_open_to("/stream"), 2);
    proxy.reset_max();
    let stats = proxy.stats();
    assert_eq!((stats.max_open_to("/stream"), stats.max_live), (1, 1));

    for size in [10, 3000, 200] {
        let raw = exchange(
            proxy.addr(),
            &post_request("/realtime/send", &vec![b'x'; size]),
        )
        .await;
        assert_eq!(split(&raw).2.len(), size);
    }
    let stats = proxy.stats();
    assert_eq!(stats.largest_body_to("/send"), 3000);
    assert_eq!(stats.largest_body_to("/stream"), 0, "GETs have no body");
    proxy.reset_max();
    assert_eq!(proxy.stats().largest_body_to("/send"), 0);
}

/// One line from the program's stdout, as JSON.
async fn reply<R>(lines: &mut tokio::io::Lines<R>) -> serde_json::Value
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let line = within("a line from hostile-proxy", lines.next_line())
        .await
        .unwrap()
        .expect("hostile-proxy closed its stdout");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[tokio::test]
async fn hostile_proxy_program_takes_commands_on_stdin_and_exits_when_it_closes() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;

    let upstream = Upstream::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hostile-proxy"))
        .args(["--upstream", &upstream.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = reply(&mut lines).await;
    let port = u16::try_from(first["port"].as_u64().unwrap()).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(first["addr"], addr.to_string());

    let mut command = async |text: &str| {
        within("a command written", async {
            stdin.write_all(text.as_bytes()).await.unwrap();
            stdin.write_all(b"\n").await.unwrap();
        })
        .await;
        reply(&mut lines).await
    };
    let ok = serde_json::json!({"ok": true});
    assert_eq!(command(r#"{"cmd":"set","refuse_upgrade":403}"#).await, ok);
    assert_eq!(refusal(ws_connect(addr).await).0, 403);
    let answered = command(
        r#"{"cmd":"answer","status":503,"times":1,"paths":{"ends_with":"/plain"},"body":"busy"}"#,
    )
    .await;
    assert_eq!(answered["ok"], true);
    let (status, _, body) = split(&exchange(addr, &get_request("/realtime/plain")).await);
    assert_eq!((status, body.as_slice()), (503, &b"busy"[..]));
    let (status, _, _) = split(&exchange(addr, &get_request("/realtime/plain")).await);
    assert_eq!(status, 200);

    // Bad commands are answered, change nothing, and the next one works.
    for bad in [
        "not json",
        r#"{"cmd":"fly"}"#,
        r#"{"cmd":"set","refuse_upgrade":99}"#,
        r#"{"cmd":"answer","status":200,"headers":{"X":"a\nb"}}"#,
    ] {
        let answer = command(bad).await;
        assert_eq!(answer["ok"], false, "{bad}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let long = "x".repeat((1 << 20) + 10);
    let answer = command(&long).await;
    assert!(
        answer["error"].as_str().unwrap().contains("at most"),
        "{answer}"
    );
    assert_eq!(refusal(ws_connect(addr).await).0, 403, "still refusing");

    let answer = command(r#"{"cmd":"stats"}"#).await;
    let stats = &answer["stats"];
    assert_eq!(stats["requests"]["/realtime/plain"], 2);
    assert_eq!(stats["upgrade_requests"], 2);
    assert_eq!(command(r#"{"cmd":"cut"}"#).await, ok);
    assert_eq!(
        command(r#"{"cmd":"cut","paths":{"ends_with":"/sse"}}"#).await,
        ok
    );

    // Stdin closes: the program stops listening and exits.
    drop(stdin);
    let status = within("hostile-proxy to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
