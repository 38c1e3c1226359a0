//! Smoke test: an echo over each transport, as a user would first try it.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn echo_over_each_transport() {
    let server = TestServer::echo(Default::default()).await;
    for transport in Transport::ALL {
        let mut client = Client::new(&server.base, 1);
        client.backlog = vec![
            Payload::Text("hello".into()),
            Payload::Binary(vec![0, 1, 2, 255]),
            Payload::Text("\"quoted\" \\ and \u{2028} 😀".into()),
        ]
        .into();
        client.expect_down = 3;
        let outcome = client
            .attach(
                transport,
                &Plan::until_done_then_close(Duration::from_secs(5)),
            )
            .await;
        assert_eq!(
            outcome,
            Ok(Outcome::Closed(1000, "done".into())),
            "{transport:?}: {:?}",
            client.log
        );
        assert_eq!(
            client.core.delivered,
            vec![
                Payload::Text("hello".into()),
                Payload::Binary(vec![0, 1, 2, 255]),
                Payload::Text("\"quoted\" \\ and \u{2028} 😀".into()),
            ],
            "{transport:?}"
        );
    }
}
