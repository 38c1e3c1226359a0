//! Answers the proxy gives itself instead of forwarding: [`Answer`], and
//! the list of those in force.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::behavior::PathFilter;
use crate::head;

/// A response the proxy sends itself to matching requests instead of
/// forwarding them: an intermediary's error page (the default body), or a
/// server's refusal (holdfast's JSON `close` frames with `503` or `400`,
/// `405` without a body, …).
///
/// Unlike a [`Behavior`](crate::Behavior), an answer can be limited to the
/// next `n` matching requests ([`times`](Self::times)) or to a span of time
/// ([`lasting`](Self::lasting)); install it with
/// [`Proxy::answer`](crate::Proxy::answer), which returns an [`AnswerId`]
/// to [withdraw](crate::Proxy::withdraw) it early. Answers are checked in
/// the order they were installed, before any behaviour; WebSocket upgrade
/// requests and requests inside `CONNECT` tunnels are matched too,
/// `CONNECT` itself is not.
///
/// ```
/// use holdfast_testkit::{Answer, PathFilter};
///
/// // A gateway failing the next three event-stream requests.
/// let gateway = Answer::new(502).paths(PathFilter::ends_with("/sse")).times(3);
/// // A server shedding load: every new request for a second.
/// let overload = Answer::new(503)
///     .json(r#"[{"t":"close","code":4503,"reason":"too many sessions","retry_after":1000}]"#)
///     .header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"))
///     .lasting(std::time::Duration::from_secs(1));
/// # let _ = (gateway, overload);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    status: u16,
    method: Option<String>,
    paths: PathFilter,
    times: Option<u64>,
    lasting: Option<Duration>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<(HeaderValue, Vec<u8>)>,
}

impl Answer {
    /// Answers every request with `status` and an intermediary's HTML
    /// error page, until withdrawn.
    pub fn new(status: u16) -> Self {
        Answer {
            status,
            method: None,
            paths: PathFilter::Any,
            times: None,
            lasting: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Only requests with this method (case-insensitive), e.g. `"POST"`.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Only requests whose path matches.
    pub fn paths(mut self, paths: PathFilter) -> Self {
        self.paths = paths;
        self
    }

    /// Only the next `n` matching requests; then the answer is gone.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Only for `time` after it is installed; then the answer is gone.
    pub fn lasting(mut self, time: Duration) -> Self {
        self.lasting = Some(time);
        self
    }

    /// Adds a header to the response (`Content-Length`, `Connection` and
    /// `Server` are the proxy's own: do not add them).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The body, with its `Content-Type`, instead of the HTML page.
    pub fn body(mut self, content_type: HeaderValue, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type, body.into()));
        self
    }

    /// A JSON body (`application/json`) instead of the HTML page.
    pub fn json(self, body: impl Into<String>) -> Self {
        self.body(
            HeaderValue::from_static("application/json"),
            body.into().into_bytes(),
        )
    }

    /// An empty body instead of the HTML page.
    pub fn empty(self) -> Self {
        self.body(HeaderValue::from_static("text/plain"), Vec::new())
    }

    /// The status it answers with.
    pub fn status(&self) -> u16 {
        self.status
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.paths.matches(path)
    }

    /// The whole response, head and body.
    pub(crate) fn response(&self) -> Vec<u8> {
        let (content_type, body) = match &self.body {
            Some((content_type, body)) => (content_type.as_bytes(), body.clone()),
            None => (
                &b"text/html"[..],
                head::error_body(self.status, "The proxy answered this request itself."),
            ),
        };
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .chain([("Content-Type", content_type)])
            .collect();
        head::response(self.status, &headers, &body)
    }
}

/// Names an installed [`Answer`], to [withdraw](crate::Proxy::withdraw) it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerId(pub u64);

/// An installed answer and what is left of it.
#[derive(Debug)]
struct Active {
    id: AnswerId,
    answer: Answer,
    left: Option<u64>,
    until: Option<Instant>,
}

/// The answers in force, in installation order.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    next: u64,
    active: Vec<Active>,
}

impl Answers {
    pub(crate) fn install(&mut self, answer: Answer) -> AnswerId {
        let id = AnswerId(self.next);
        self.next += 1;
        let until = answer.lasting.map(|t| Instant::now() + t);
        let left = answer.times;
        if left != Some(0) {
            self.active.push(Active {
                id,
                answer,
                left,
                until,
            });
        }
        id
    }

    pub(crate) fn withdraw(&mut self, id: AnswerId) -> bool {
        let before = self.active.len();
        self.active.retain(|a| a.id != id);
        self.active.len() != before
    }

    /// The response for this request, if an answer takes it (and counts it).
    pub(crate) fn take(&mut self, method: &str, path: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.active.retain(|a| a.until.is_none_or(|u| now < u));
        let index = self
            .active
            .iter()
            .position(|a| a.answer.matches(method, path))?;
        let active = &mut self.active[index];
        let response = active.answer.response();
        if let Some(left) = active.left.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.active.remove(index);
            }
        }
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_answers_run_out_in_order() {
        let mut answers = Answers::default();
        let first = answers.install(
            Answer::new(502)
                .paths(PathFilter::ends_with("/sse"))
                .times(2),
        );
        answers.install(Answer::new(503).method("post").times(1));
        assert!(answers.take("GET", "/realtime/poll").is_none());
        let page = answers.take("GET", "/realtime/sse").unwrap();
        assert!(page.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
        // POST /sse: the first installed answer wins.
        assert!(
            answers
                .take("POST", "/realtime/sse")
                .unwrap()
                .starts_with(b"HTTP/1.1 502")
        );
        assert!(answers.take("GET", "/realtime/sse").is_none(), "used up");
        assert!(!answers.withdraw(first), "already gone");
        assert!(
            answers
                .take("POST", "/x")
                .unwrap()
                .starts_with(b"HTTP/1.1 503")
        );
        assert!(answers.take("POST", "/x").is_none());
        // Zero times: never in force.
        answers.install(Answer::new(500).times(0));
        assert!(answers.take("GET", "/").is_none());
    }

    #[test]
    fn withdrawn_answers_stop() {
        let mut answers = Answers::default();
        let id = answers.install(Answer::new(405).method("POST").empty());
        for _ in 0..3 {
            assert!(answers.take("POST", "/realtime/poll").is_some());
        }
        assert!(answers.withdraw(id));
        assert!(answers.take("POST", "/realtime/poll").is_none());
    }

    #[test]
    fn responses_carry_headers_and_body() {
        let answer = Answer::new(503)
            .json("[1]")
            .header(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        let text = String::from_utf8(answer.response()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nretry-after: 2\r\n"), "{text}");
        assert!(
            text.contains("\r\nContent-Type: application/json\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n[1]"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn lasting_answers_expire() {
        let mut answers = Answers::default();
        answers.install(Answer::new(502).lasting(Duration::from_millis(300)));
        assert!(answers.take("GET", "/a").is_some());
        tokio::time::advance(Duration::from_millis(299)).await;
        assert!(answers.take("GET", "/a").is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(answers.take("GET", "/a").is_none());
    }
}
